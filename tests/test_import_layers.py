"""The import graph of qthink/, read from every module's imports (top-level and inside
functions alike): no cycle, and no edge that points up the layers below.

Layers, lowest first; a module may import its own layer and the ones below it:

0. foundations with no qthink dependency: errors, the cache folder, optional-package
   messages, the thinking and tool-call parsers (pure functions of text), the native
   kernels, the operating-system jail
1. configuration and text: config, the tokenizer, the known-model table
2. the model: its layers, loading, memory planning, random checkpoints
3. the engine: scheduler, runner, sampler, logits processors, the offline LLM and AsyncEngine
4. applications over the engine: viewer, eval, agent, qthink-nano
5. the server (its web page comes from the viewer)
6. the command line: every `*cli` module, the default model (demo), the engine flags
"""

import ast
from pathlib import Path

import qthink

PACKAGE = Path(qthink.__file__).parent

LAYERS = [
    [
        "qthink",
        "qthink.errors",
        "qthink.cache",
        "qthink.extras",
        "qthink.parsing",
        "qthink.kernels",
        "qthink.sandbox",
    ],
    ["qthink.config", "qthink.tokenizer", "qthink.known_models"],
    ["qthink.memory", "qthink.model", "qthink.loader", "qthink.random_checkpoint"],
    ["qthink.engine"],
    ["qthink.viewer", "qthink.eval", "qthink.agent", "qthink.nano"],
    ["qthink.server"],
    ["qthink.demo", "qthink.engine_flags", "qthink.__main__"],
]
COMMAND_LINE = len(LAYERS) - 1


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path, names: dict[str, Path]) -> set[str]:
    """The qthink modules a file imports when it runs, anywhere in it (in functions too)."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import module` depends on that module, `from module import name` on the module
            targets = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target.startswith("qthink"):
                found.add(target)
    return found


def layer(module: str) -> int:
    if module.endswith("cli"):  # qthink.cli, qthink.chat_cli, qthink.server.cli, ...
        return COMMAND_LINE
    matches = [
        (len(prefix), i)
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "qthink" and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} has no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    names = module_names()
    return {m: imports(p, names) - {m} for m, p in names.items()}


def test_no_import_points_up_a_layer():
    upward = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer(t) > layer(m) and not m.startswith(t + ".")  # a package's modules may import it
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(path: list[str]) -> None:
        module = path[-1]
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(path + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit([module])
    assert not cycles, "\n".join(cycles)
