"""Serving engine: sampling, sequences, paged KV blocks, scheduling, the model runner."""
