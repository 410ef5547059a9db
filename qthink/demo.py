"""The offline default model of the command line: qthink-nano when it can be built, else a
labelled random-weight one. The one place that resolves a model nobody named."""

import logging
from pathlib import Path

from qthink.cache import cache_dir
from qthink.nano.build import ARTIFACT, ensure_nano
from qthink.random_checkpoint import tiny_config, write_random_checkpoint

log = logging.getLogger("qthink")


def model_or_default(model: str | None) -> str:
    """The model a command names, else the offline default."""
    return model or str(default_model_path())


def default_model_path() -> Path:
    """The checkpoint used when no model is named: it works offline, with nothing downloaded."""
    return ensure_nano() if ARTIFACT.is_file() else random_demo_path()


def random_demo_path() -> Path:
    """A tiny Qwen3 with random weights and the real tokenizer: it runs, but prints noise."""
    path = cache_dir() / "random-tiny-qwen3"
    if not (path / "config.json").is_file():
        log.warning("writing a tiny RANDOM-WEIGHT demo model to %s (its output is noise)", path)
        write_random_checkpoint(path, tiny_config(), seed=0)
    return path


def model_display_name(model_dir: Path, named: str | None) -> str:
    """What to call a model to a user: as they named it, else the demo model's readable name
    rather than its cache folder (a content hash)."""
    if named:
        return named
    return "qthink-nano" if Path(model_dir).parent.name == "nano" else "qthink-demo"
