"""Thinking-trace viewer: web chat, trace files and step segmentation."""
