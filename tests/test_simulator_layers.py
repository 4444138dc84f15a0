"""The simulator's pure modules reach no event loop or HTTP library, however indirectly."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PURE = (
    "batchpoll.simulator.fates",
    "batchpoll.simulator.policer",
    "batchpoll.simulator.settings",
    "batchpoll.simulator.stats",
)
FORBIDDEN = frozenset({"aiohttp", "anyio", "asyncio"})


def _imports(module: str) -> set[str]:
    """The absolute names *module*'s source imports (relative imports resolved)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
    return names


def _reached(start: str) -> set[str]:
    """Every module *start* imports, following batchpoll's own modules transitively."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in _imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name.split(".")[0] == "batchpoll":
                    todo.append(name)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_simulator_module_imports_no_loop_or_http(module: str) -> None:
    """A pure simulator module imports none of asyncio, anyio or aiohttp, directly or not."""
    bad = sorted(name for name in _reached(module) if name.split(".")[0] in FORBIDDEN)
    assert bad == [], f"{module} reaches {bad}"


def test_the_walk_sees_the_server_reach_aiohttp() -> None:
    """The import walk finds aiohttp behind the server module, so it can see a forbidden import."""
    assert "aiohttp" in _reached("batchpoll.simulator.server")
