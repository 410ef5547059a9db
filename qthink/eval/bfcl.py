"""BFCL's own single-turn data, read offline from the `bfcl-eval` package, as qthink eval items."""

import importlib.util
import json
import re
from pathlib import Path

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)
ALIASES = {"simple": "simple_python"}
OPENAI_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string", "list": "array"}


def data_dir() -> Path:
    """The `data/` folder inside the installed bfcl-eval package (found without importing it:
    its import pulls in many model SDKs that an evaluation never needs)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("BFCL data needs the bfcl-eval package: pip install --no-deps bfcl-eval")
    return Path(spec.submodule_search_locations[0]) / "data"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _category_file(folder: Path, category: str) -> Path:
    # a plain glob would let "irrelevance" also pick up "BFCL_v4_live_irrelevance.json"
    pattern = re.compile(rf"BFCL_v\d+_{category}\.json")
    found = sorted(p for p in folder.glob("BFCL_v*.json") if pattern.fullmatch(p.name))
    if not found:
        raise FileNotFoundError(f"no BFCL file for category {category!r} in {folder}")
    return found[-1]


def openai_schema(schema: dict) -> dict:
    """BFCL's Python-flavoured JSON schema (`dict`, `float`, `tuple`) in the types servers accept."""
    out = {k: v for k, v in schema.items() if k not in ("properties", "items")}
    if "type" in schema:
        out["type"] = OPENAI_TYPES.get(schema["type"], schema["type"])
    if "properties" in schema:
        out["properties"] = {k: openai_schema(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = openai_schema(schema["items"])
    return out


def load_category(category: str, folder: Path | None = None) -> list[dict]:
    """One BFCL category as items of kind "function" (see qthink.eval.tasks for the schema)."""
    category = ALIASES.get(category, category)
    if category not in CATEGORIES:
        raise ValueError(f"unsupported BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")
    folder = folder or data_dir()
    questions = _read_jsonl(_category_file(folder, category))
    answers = {}
    if category not in ("irrelevance", "live_irrelevance", "live_relevance"):
        answers = {
            a["id"]: a["ground_truth"]
            for a in _read_jsonl(_category_file(folder / "possible_answer", category))
        }
    return [
        {
            "id": q["id"],
            "kind": "function",
            "category": category,
            "messages": q["question"][0],
            "functions": q["function"],
            "ground_truth": answers.get(q["id"], []),
        }
        for q in questions
    ]
