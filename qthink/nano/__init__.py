"""qthink-nano: a tiny Qwen3 model trained on synthetic 2507-format conversations."""
