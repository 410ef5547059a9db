"""Qwen3 model: layers, paged attention, the decoder, quantized linears."""
