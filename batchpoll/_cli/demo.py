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

from .._core.config import Settings
from .._core.recordline import record_of
from .._core.redact import Secret, shown
from .._core.source import Item, item_key, iter_items
from .._core.stats import RunStats
from .._io.client import ApiClient
from .._io.engine import Engine
from .._io.logs import configure, get_logger
from .._io.outfile.append import LineSink
from .._io.outfile.lock import OutputLock
from .._io.outfile.plan import check_replaceable
from .._io.outfile.read import read_lines
from .._io.outfile.repair import prepare_output
from .._io.outfile.replace import replace_atomically
from .._views import progress
from .._views.report import render
from ..errors import InputFileError
from ..simulator import SimSettings, running_simulator
from .run import loop_options

_KEY = "demo-key"  # the simulator's own key; it never leaves the process


_IDS_HEADER = b"# batchpoll demo ids\n"


def _write_ids(path: Path, n: int) -> None:
    """n ids: mostly ordinary, plus one of each documented odd form, a duplicate and junk.

    An existing file is replaced only if it is an earlier demo's (its first line says so).
    """
    lines = [f"demo-{i:06d}" for i in range(n)]
    specials = ["notfound-demo", "reject-demo", "weird-demo", "demo-000000", "bad id with spaces"]
    lines[: len(specials)] = specials if n >= 50 else lines[: len(specials)]
    check_replaceable(str(path), "demo ids file", lambda head: head.startswith(_IDS_HEADER))
    data = _IDS_HEADER + ("\n".join(lines) + "\n").encode()
    try:
        replace_atomically(str(path), data)
    except OSError as exc:
        raise InputFileError(f"cannot write {shown(str(path))}: {exc.strerror or exc}") from None


def run_demo(*, ids: int, seed: int, directory: Path) -> int:
    """Poll *ids* simulated ids end to end; 0 when every distinct id got exactly one record."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A file in the way, a path through a file, a name too long, no permission.
        why = "is not a directory" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise InputFileError(
            f"--dir {shown(str(directory))}: cannot make the directory: {why}"
        ) from None
    ids_path, out_path = directory / "ids.txt", directory / "results.jsonl"
    _write_ids(ids_path, ids)
    lock = OutputLock(str(out_path), "demo output")
    try:
        prepare_output(str(out_path), lock, resume=False, overwrite=True, retry_statuses=())
        configure("auto", "error", secret=_KEY)
        stats = RunStats()
        live = progress.wanted(True, sys.stderr)
        with progress.ProgressView(stats) if live else contextlib.nullcontext():
            anyio.run(_demo, ids_path, lock, seed, stats, backend_options=loop_options())
    finally:
        lock.close()
    expected = {item_key(i) for i in iter_items([ids_path.read_bytes()])}
    seen = Counter(found[0] for line in read_lines(str(out_path)) if (found := record_of(line)))
    exact = len(seen) == len(expected) and all(v == 1 for v in seen.values())
    summary = stats.summary()
    summary["exit_code"] = code = 0 if exact else 1
    width = min(100, shutil.get_terminal_size().columns)
    print(f"batchpoll demo: {summary['ids']} distinct ids polled -> {out_path}")
    print(render(summary, width=width))
    print(f"one record per id: {'yes' if exact else 'NO'}")
    return code


async def _demo(ids_path: Path, lock: OutputLock, seed: int, stats: RunStats) -> None:
    out_path = lock.path
    sim = SimSettings(
        seed=seed, api_key=_KEY, latency=0.02, min_polls=1, max_polls=4, error_rate=0.02
    )
    async with running_simulator(sim) as server:
        settings = Settings(
            base_url=server.url,
            api_key=Secret(_KEY),
            api_key_source="the demo",
            output=out_path,
            concurrency=32,
            rate=500.0,
            burst=10,
            interval=0.2,
            max_interval=1.0,
            request_timeout=5.0,
        )
        sink = LineSink(out_path, fd=lock.fd)
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
