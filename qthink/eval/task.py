"""Task: a named list of evaluation items; TaskError: a source or item that cannot be used."""

from dataclasses import dataclass, field


@dataclass
class Task:
    name: str
    items: list[dict] = field(default_factory=list)


class TaskError(ValueError):
    """A task source that cannot be read or an item that breaks the schema."""
