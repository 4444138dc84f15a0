"""The tree's layers hold: the core is pure, and each layer imports only the layers under it.

Read from the source (AST), not by importing: an import inside a function, or one only for
type checking, counts as much as one at the top.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchpoll"

#: What the pure core may never reach, however indirectly: event loops, sockets, terminals,
#: logging. Time is passed in; I/O belongs to the shell around it.
FORBIDDEN_IN_CORE = frozenset(
    {"asyncio", "aiohttp", "anyio", "redis", "rich", "structlog", "uvloop"}
)

#: Each layer's rank; a module may import modules of its own rank or lower. The shared types
#: (records, errors, the version) sit with the core; the simulator is a server of its own and
#: leans only on the core, never on the client it exists to test.
RANKS = {"_core": 0, "records": 0, "errors": 0, "_version": 0, "_io": 1, "_views": 2, "_cli": 3}
TOP = 4  # _api, __init__, __main__: the public surface, over everything but the commands
SIMULATOR_MAY_IMPORT = frozenset({"_core", "records", "errors", "_version", "simulator"})


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> Iterator[str]:
    """Every module *path* imports, absolute (``from . import x`` gives ``pkg.x`` too)."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def internal(name: str, known: dict[str, Path]) -> str | None:
    """The package module *name* refers to, if it is ours (``pkg.mod.attr`` gives ``pkg.mod``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


#: The simulator's pure parts: which answer an id gets, its policer, settings and counts.
PURE_SIMULATOR = ("fates", "policer", "settings", "stats")
FORBIDDEN_IN_PURE_SIMULATOR = frozenset({"asyncio", "aiohttp", "anyio"})


def forbidden_reached(
    root: Path, starts: tuple[str, ...] = ("_core",), forbidden: frozenset[str] = FORBIDDEN_IN_CORE
) -> list[str]:
    """``start -> ... -> forbidden`` for every forbidden module reached from *starts*
    (modules or packages under *root*)."""
    known = modules(root)
    prefixes = tuple(f"{root.name}.{s}" for s in starts)
    starts = tuple(m for m in known if m.startswith(prefixes))
    found: list[str] = []
    for start in starts:
        seen, stack = {start}, [(start, [start])]
        while stack:
            mod, chain = stack.pop()
            for imported in imports_of(root, known[mod]):
                if imported.split(".")[0] in forbidden:
                    found.append(" -> ".join([*chain, imported]))
                ours = internal(imported, known)
                if ours is not None and ours not in seen:
                    seen.add(ours)
                    stack.append((ours, [*chain, ours]))
    return sorted(set(found))


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(root: Path) -> list[str]:
    """``importer -> imported`` for every import that reaches up a layer."""
    known = modules(root)
    found = []
    for mod, path in known.items():
        layer = layer_of(mod)
        for imported in imports_of(root, path):
            ours = internal(imported, known)
            if ours is None or ours == f"{root.name}":
                continue
            target = layer_of(ours)
            if layer == "simulator":
                bad = target not in SIMULATOR_MAY_IMPORT
            elif target == "simulator":
                bad = layer not in {"_cli"}  # only the `simulate` and `demo` commands run it
            else:
                bad = RANKS.get(target, TOP) > RANKS.get(layer, TOP) or (
                    target == "_cli" and layer not in {"_cli", "__main__"}
                )
            if bad:
                found.append(f"{mod} -> {ours}")
    return sorted(set(found))


def test_the_core_reaches_no_event_loop_socket_terminal_or_logger() -> None:
    assert forbidden_reached(PACKAGE) == []


def test_the_simulator_s_pure_parts_reach_no_event_loop_or_http() -> None:
    pure = tuple(f"simulator.{name}" for name in PURE_SIMULATOR)
    assert forbidden_reached(PACKAGE, pure, FORBIDDEN_IN_PURE_SIMULATOR) == []
    # ...and the same walk does see the server reach aiohttp.
    server = forbidden_reached(PACKAGE, ("simulator.server",), FORBIDDEN_IN_PURE_SIMULATOR)
    assert "batchpoll.simulator.server -> aiohttp" in server


def test_each_layer_imports_only_the_layers_under_it() -> None:
    assert layer_violations(PACKAGE) == []


def test_every_module_is_in_a_layer() -> None:
    layers = {layer_of(m) for m in modules(PACKAGE)}
    assert layers <= {*RANKS, "simulator", "_api", "__init__", "__main__"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package to break."""
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("_core/backoff.py", "import anyio"),
        ("_core/ratelimit.py", "def late():\n    from structlog import get_logger\n"),
        ("records.py", "from asyncio import sleep"),  # reached from the core
    ],
)
def test_a_forbidden_import_in_the_core_is_found(tree: Path, module: str, line: str) -> None:
    with (tree / module).open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    reached = forbidden_reached(tree)
    assert reached
    assert all(r.startswith("batchpoll._core.") for r in reached)


def test_a_loop_import_in_the_simulator_s_fates_is_found(tree: Path) -> None:
    with (tree / "simulator" / "fates.py").open("a", encoding="utf-8") as f:
        f.write("\nimport asyncio\n")
    pure = tuple(f"simulator.{name}" for name in PURE_SIMULATOR)
    reached = forbidden_reached(tree, pure, FORBIDDEN_IN_PURE_SIMULATOR)
    assert reached == ["batchpoll.simulator.fates -> asyncio"]


def test_a_forbidden_import_reached_through_another_module_is_found(tree: Path) -> None:
    (tree / "_io" / "leak.py").write_text("import aiohttp\n", encoding="utf-8")
    with (tree / "_core" / "schedule.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom .._io import leak\n")
    assert "batchpoll._core.schedule -> batchpoll._io.leak -> aiohttp" in forbidden_reached(tree)
    assert "batchpoll._core.schedule -> batchpoll._io.leak" in layer_violations(tree)


def test_an_upward_import_is_found(tree: Path) -> None:
    with (tree / "_io" / "sink.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom .._views import progress\n")
    assert "batchpoll._io.sink -> batchpoll._views.progress" in layer_violations(tree)
