"""Helpers the test modules share: servers on real sockets, qthink-nano, scripted endpoints."""
