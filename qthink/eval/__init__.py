"""Evaluation harness for the model card benchmarks over any OpenAI-compatible endpoint."""

from qthink.extras import require

require("eval")
