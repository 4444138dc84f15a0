"""The README's library example runs as written, against the simulator."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import pytest
from helpers import KEY

from batchpoll.simulator import SimSettings, running_simulator, truth

README = Path(__file__).parent.parent / "README.md"
pytestmark = pytest.mark.anyio


def example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: library.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its library example"
    return match.group(1)


async def test_the_library_example_runs(tmp_path: Path) -> None:
    """The example prints one line per id, with the status the API gives."""
    script = tmp_path / "example.py"
    script.write_text(example())
    sim_settings = SimSettings(api_key=KEY, min_polls=1, max_polls=1)
    async with running_simulator(sim_settings) as sim:
        env = {**os.environ, "CEKURA_API_KEY": KEY, "CEKURA_API_URL": sim.url}
        result = await anyio.run_process([sys.executable, str(script)], env=env, check=False)
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.decode().splitlines())
    expected = sorted(
        f"{pid} {truth(pid, sim_settings)[0]}" for pid in ("progress-id-1", "progress-id-2")
    )
    assert [" ".join(line.split()[:2]) for line in lines] == expected


def module_map() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- module map -->\n(.*?)<!-- /module map -->", text, re.S)
    assert match, "the README lost its module map"
    return match.group(1)


def test_the_module_map_names_every_module_and_only_those() -> None:
    """Each module of the package is in the README's map by its path, and no gone one is."""
    package = README.parent / "batchpoll"
    present = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    }
    named = set(re.findall(r"`([\w/]+\.py)`", module_map()))
    assert sorted(present - named) == [], "modules missing from the README's map"
    assert sorted(named - present) == [], "the README's map names modules that are gone"
