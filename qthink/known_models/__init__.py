"""The published config.json of known Qwen checkpoints, shipped so `qthink plan` works offline."""

import json
from pathlib import Path

FOLDER = Path(__file__).parent
ORG = "Qwen"


def known_names() -> list[str]:
    """Hub ids of the shipped configs, e.g. Qwen/Qwen3-4B-Thinking-2507."""
    return [f"{ORG}/{p.stem}" for p in sorted(FOLDER.glob("*.json"))]


def known_config(name: str) -> dict | None:
    """The shipped config.json of hub id `name` (case as on the hub, or any case), or None."""
    org, _, model = name.rpartition("/")
    if org and org.lower() != ORG.lower():
        return None
    for path in FOLDER.glob("*.json"):
        if path.stem.lower() == model.lower():
            return json.loads(path.read_text())
    return None
