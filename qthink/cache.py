"""Where qthink keeps what it builds for the user: $QTHINK_CACHE, else $XDG_CACHE_HOME/qthink."""

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("QTHINK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "qthink"
    return Path(root).expanduser()
