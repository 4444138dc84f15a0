"""Interrupted runs: SIGTERM stops cleanly; after SIGKILL, --resume finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import orjson
import pytest
from helpers import KEY

from batchpoll.simulator import SimSettings, Simulator, running_simulator

pytestmark = pytest.mark.anyio

SIM = SimSettings(seed=4, api_key=KEY, latency=0.01, min_polls=1, max_polls=3)
IDS = [f"int-{i}" for i in range(300)]


def command(sim: Simulator, ids: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "batchpoll", "run", str(ids), "-o", str(out),
        "--base-url", sim.url, "--rate", "150", "--interval", "0.05", "--max-interval", "0.1",
        "--fail-on", "none", "--log-format", "json", *extra,
    ]  # fmt: skip


def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    return base | {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}


async def start_then_signal(
    sim: Simulator, cmd: list[str], tmp_path: Path, signum: int, after_requests: int
) -> int:
    """Start the CLI, send *signum* once the server has seen *after_requests*; its exit code."""
    start = sim.stats.requests
    async with await anyio.open_process(
        cmd, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as proc:
        with anyio.fail_after(30):
            await sim.wait_until(lambda st: st.requests >= start + after_requests)
        proc.send_signal(signum)
        with anyio.fail_after(5):  # the contract: exit within 5 s of the signal
            return await proc.wait()


def records(out: Path) -> list[dict[str, object]]:
    data = out.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a torn last line"
    return [orjson.loads(line) for line in data.splitlines()]


async def test_sigterm_exits_143_with_whole_lines_and_resume_finishes(tmp_path: Path) -> None:
    """SIGTERM: exit 143, only whole lines in OUTPUT, and --resume ends with one record per id."""
    ids, out = tmp_path / "ids.txt", tmp_path / "out.jsonl"
    ids.write_text("\n".join(IDS) + "\n")
    async with running_simulator(SIM) as sim:
        code = await start_then_signal(sim, command(sim, ids, out), tmp_path, signal.SIGTERM, 60)
        assert code == 143
        first = records(out)
        assert 0 < len(first) < len(IDS)
        result = await anyio.run_process(
            command(sim, ids, out, "--resume"), env=env(tmp_path), check=False
        )
    assert result.returncode == 0
    counts = Counter(r["progress_id"] for r in records(out))
    assert set(counts) == set(IDS)
    assert set(counts.values()) == {1}


async def test_sigint_exits_130(tmp_path: Path) -> None:
    """SIGINT stops the run the same way, with exit code 130."""
    ids, out = tmp_path / "ids.txt", tmp_path / "out.jsonl"
    ids.write_text("\n".join(IDS) + "\n")
    async with running_simulator(SIM) as sim:
        code = await start_then_signal(sim, command(sim, ids, out), tmp_path, signal.SIGINT, 30)
    assert code == 130
    records(out)


async def test_sigkill_three_times_then_resume_gives_exactly_one_record_per_id(
    tmp_path: Path,
) -> None:
    """Killed with SIGKILL three times and resumed each time: exactly one record per id."""
    ids, out = tmp_path / "ids.txt", tmp_path / "out.jsonl"
    ids.write_text("\n".join(IDS) + "\n")
    async with running_simulator(SIM) as sim:
        for attempt in range(3):
            cmd = command(sim, ids, out, *(["--resume"] if attempt else []))
            code = await start_then_signal(sim, cmd, tmp_path, signal.SIGKILL, 40)
            assert code == -signal.SIGKILL
        result = await anyio.run_process(
            command(sim, ids, out, "--resume"), env=env(tmp_path), check=False
        )
    assert result.returncode == 0, result.stderr
    counts = Counter(r["progress_id"] for r in records(out))
    assert set(counts) == set(IDS)
    assert set(counts.values()) == {1}
