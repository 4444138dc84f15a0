"""The benchmark harness (benchmarks/run.py) at smoke sizes, so its code cannot rot.

It checks that every client finished every id it was given, never how fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each peer runs on; a peer whose packages are missing is skipped, and only then.
NEEDS = {
    "batchpoll": (),
    "naive_aiohttp": (),
    "naive_httpx": ("httpx",),
    "aiometer": ("aiometer",),
    "ceiling": ("uvloop",),
}

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or not hasattr(os, "wait4"),
    reason="the harness pins and measures processes the Linux way",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run `benchmarks/run.py --quick` once for the module; its results.json."""
    out = tmp_path_factory.mktemp("bench")
    clients = [c for c, mods in NEEDS.items() if all(importlib.util.find_spec(m) for m in mods)]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--clients", ",".join(clients)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# batchpoll side by side")
    results = json.loads((out / "results.json").read_text())
    results["clients"] = clients
    return results


def test_every_client_finishes_every_id(smoke: dict[str, Any]) -> None:
    """In (a) and (b), each client's output holds every id it was given, once finished."""
    runs = [r for r in smoke["runs"] if r["workload"] in ("a", "b")]
    assert {r["client"] for r in runs if r["workload"] == "a"} == set(smoke["clients"])
    for r in runs:
        assert (r["client"], r["workload"], r["finished"]) == (r["client"], r["workload"], r["ids"])
        assert r["requests"] >= r["ids"]


def test_every_client_holds_ids_waiting(smoke: dict[str, Any]) -> None:
    """In (c), every client ran with ids waiting and polled some; start-up was timed."""
    runs = [r for r in smoke["runs"] if r["workload"].startswith("c")]
    assert {r["client"] for r in runs} == set(smoke["clients"])
    assert all(r["polled"] >= 1 and r["rss_kb"] > 0 for r in runs)
    assert set(smoke["meta"]["startup"]) == {
        "python -c pass",
        "batchpoll --help",
        "batchpoll run, 1 id",
    }
