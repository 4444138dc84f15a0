"""``batchpoll demo``: the simulator and a real run in one process, then a summary.

The run uses the same engine and HTTP client as ``batchpoll run``, with settings sized so the
demo takes seconds rather than the minutes the API's default rate would.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import orjson

from . import progress
from .client import ApiClient
from .config import Secret, Settings
from .engine import Engine
from .logs import configure, get_logger
from .report import render
from .runner import loop_options
from .simulator import SimSettings, running_simulator
from .sink import LineSink, prepare_output
from .source import Item, iter_items
from .stats import RunStats

_KEY = "demo-key"  # the simulator's own key; it never leaves the process


def _write_ids(path: Path, n: int) -> None:
    """n ids: mostly ordinary, plus one of each documented odd form, a duplicate and junk."""
    lines = [f"demo-{i:06d}" for i in range(n)]
    specials = ["notfound-demo", "reject-demo", "weird-demo", "demo-000000", "bad id with spaces"]
    lines[: len(specials)] = specials if n >= 50 else lines[: len(specials)]
    path.write_text("# batchpoll demo ids\n" + "\n".join(lines) + "\n")


def run_demo(*, ids: int, seed: int, directory: Path) -> int:
    """Poll *ids* simulated ids end to end; 0 when every distinct id got exactly one record."""
    directory.mkdir(parents=True, exist_ok=True)
    ids_path, out_path = directory / "ids.txt", directory / "results.jsonl"
    _write_ids(ids_path, ids)
    prepare_output(str(out_path), resume=False, overwrite=True, retry_statuses=())
    configure("auto", "error", secret=_KEY)
    stats = RunStats()
    live = progress.wanted(True, sys.stderr)
    with progress.ProgressView(stats) if live else contextlib.nullcontext():
        anyio.run(_demo, ids_path, out_path, seed, stats, backend_options=loop_options())
    expected = {i if isinstance(i, str) else i.text for i in iter_items([ids_path.read_bytes()])}
    seen = Counter(orjson.loads(line)["progress_id"] for line in out_path.read_bytes().splitlines())
    exact = len(seen) == len(expected) and all(v == 1 for v in seen.values())
    summary = stats.summary()
    summary["exit_code"] = code = 0 if exact else 1
    width = min(100, shutil.get_terminal_size().columns)
    print(f"batchpoll demo: {summary['ids']} distinct ids polled -> {out_path}")
    print(render(summary, width=width))
    print(f"one record per id: {'yes' if exact else 'NO'}")
    return code


async def _demo(ids_path: Path, out_path: Path, seed: int, stats: RunStats) -> None:
    sim = SimSettings(
        seed=seed, api_key=_KEY, latency=0.02, min_polls=1, max_polls=4, error_rate=0.02
    )
    async with running_simulator(sim) as server:
        settings = Settings(
            base_url=server.url,
            api_key=Secret(_KEY),
            api_key_source="the demo",
            output=str(out_path),
            concurrency=32,
            rate=500.0,
            burst=10,
            interval=0.2,
            max_interval=1.0,
            request_timeout=5.0,
        )
        sink = LineSink(str(out_path))
        try:
            async with ApiClient(settings) as client:
                engine = Engine(settings, client.poll, sink, log=get_logger(), stats=stats)
                await engine.run(_items(ids_path))
        finally:
            sink.close()


async def _items(path: Path) -> AsyncIterator[Item]:
    data = await anyio.Path(path).read_bytes()
    for item in iter_items([data]):
        yield item
