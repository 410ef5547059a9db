"""Optional parts install optionally: each part checks its extra's packages on import and, when one
is missing, says which extra to install instead of a bare ModuleNotFoundError."""

from importlib.util import find_spec

# extra -> (the part it enables, the importable modules it installs)
EXTRAS = {
    "serve": ("the server and the viewer", ("fastapi", "uvicorn", "pydantic", "prometheus_client")),
    "agent": ("the agent", ("openai", "jsonschema", "mcp", "jupyter_client", "ipykernel")),
    "eval": ("the evaluation harness", ("openai", "math_verify", "matplotlib")),
}


class MissingExtra(ImportError):
    """An optional part was used without its extra installed; the message says what to install."""


def require(extra: str) -> None:
    """Raise MissingExtra naming `extra` when one of its packages cannot be imported."""
    part, modules = EXTRAS[extra]
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtra(
            f"qthink's [{extra}] extra (missing: {', '.join(missing)}) is needed for {part}: "
            f"pip install 'qthink[{extra}]', or 'qthink[all]' for every part",
            name=missing[0],
        )


def _importable(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ImportError:  # a parent package or an import hook refused it
        return False
