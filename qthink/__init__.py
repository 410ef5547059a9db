"""qthink: run Qwen3 thinking models end to end."""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "qthink.engine.offline",
    "SamplingParams": "qthink.engine.sampling_params",
    "RequestOutput": "qthink.engine.outputs",
    "CompletionOutput": "qthink.engine.outputs",
    "AsyncEngine": "qthink.engine.async_engine",
    "Tokenizer": "qthink.tokenizer",
    "ThinkingFormat": "qthink.parsing.thinking",
    "Assistant": "qthink.agent.assistant",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    """Import public names lazily, so `import qthink` stays cheap and a CLI starts fast."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qthink' has no attribute {name!r}")
