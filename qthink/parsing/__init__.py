"""Parsers that split model output into reasoning, answer and tool calls."""
