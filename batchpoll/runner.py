"""One ``batchpoll run``: output prepared, logs and progress set up, the engine run, the
summary, JUnit and exit code afterwards. ``cli`` imports this only for ``run``, so
``batchpoll --help`` never pays for anyio, structlog or aiohttp."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.abc
import orjson
from structlog.typing import FilteringBoundLogger

from . import fdio
from .config import Settings, describe
from .errors import InputFileError, UsageError
from .shard import owned
from .sink import (
    STDOUT,
    LineSink,
    RecordSink,
    SplitSink,
    TeeSink,
    prepare_output,
    read_lines,
)
from .source import Item, aiter_items
from .stats import RunStats, exit_code

if TYPE_CHECKING:
    from .engine import Engine
    from .progress import ProgressView

_CHUNK = 64 * 1024
#: Seconds the sink may take, after the first signal, to write the records of finished ids.
STOP_GRACE_S = 3.0
#: Seconds a second signal waits for the terminal to take the view's last frame.
LAST_WORDS_S = 0.2
#: The cyclic collector's first threshold during a run (CPython's default is 700).
GC_GEN0_THRESHOLD = 7000


def run_settings(settings: Settings, input_path: str, *, overwrite: bool = False) -> int:
    """Run one poll job as the CLI does; return its exit code."""
    from . import logs

    if settings.junit and settings.output == STDOUT:
        raise UsageError("--junit needs -o OUTPUT: the report is built from the records written")
    logs.configure(
        settings.log_format,
        settings.log_level,
        secret=settings.api_key.reveal() if settings.api_key else None,
    )
    log = logs.get_logger()
    for warning in settings.warnings:
        log.warning("config_warning", message=warning)
    prior = prepare_output(
        settings.output,
        resume=settings.resume,
        overwrite=overwrite,
        retry_statuses=settings.retry_statuses,
    )
    stats = RunStats(fail_on=settings.fail_on)
    stats.add_prior(prior.statuses)
    if prior.done or prior.torn_bytes:
        log.info(
            "resumed",
            kept=len(prior.done),
            replaced=prior.replaced,
            torn_bytes_cut=prior.torn_bytes,
        )
    log.info("run_started", **describe(settings))
    source = _open_input(input_path)
    sink = LineSink(settings.output, fsync=settings.fsync)
    split = _split_sink(settings)
    from . import progress

    live = progress.wanted(settings.progress, sys.stderr)
    view = progress.ProgressView(stats) if live else None
    try:
        with view or contextlib.nullcontext(), collector_tuned():
            anyio.run(
                _run_engine,
                settings,
                source,
                prior.done,
                TeeSink(sink, *split),
                stats,
                log,
                view,
                backend_options=loop_options(),
            )
    finally:
        sink.close()
        source.close()
        for extra in split:
            extra.close()
    summary = stats.summary()
    summary["resumed"] = stats.resumed
    code = exit_code(stats.by_status, settings.fail_on)
    if stats.signal is not None:
        code = 128 + stats.signal
    summary["exit_code"] = code
    log.info("run_finished", **summary)
    if settings.summary:
        _write_summary(settings.summary, summary)
    if settings.junit:
        _write_junit(settings)
    if lost := fdio.dropped():
        log.warning("log_lines_dropped", writes=lost, reason="stderr was not being read")
    if sys.stderr.isatty():
        from .report import render

        fdio.write_text(sys.stderr, render(summary, width=shutil.get_terminal_size().columns))
    # A terminal or pipe nobody reads keeps what is left; nothing at exit waits on it.
    fdio.settle(fdio.EXIT_WAIT_S)
    return code


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """A run's process with the cyclic GC's first threshold raised, restored afterwards.

    Thousands of aiohttp objects are alive at any moment of a busy run. At the default
    threshold the collector started every few dozen polls, took about a tenth of the CPU and
    found almost nothing: the engine makes no reference cycles. The CLI owns its process, so
    it may raise it; the library (``poll_all``) leaves the host program's settings alone.
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_GEN0_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def loop_options() -> dict[str, bool]:
    """uvloop when it is installed (the ``fast`` extra), else the plain asyncio loop.

    ``BATCHPOLL_LOOP=asyncio`` forces the plain loop, so both stay tested.
    """
    if os.environ.get("BATCHPOLL_LOOP") == "asyncio" or importlib.util.find_spec("uvloop") is None:
        return {}
    return {"use_uvloop": True}


def _split_sink(settings: Settings) -> list[SplitSink]:
    if settings.split_by_status is None:
        return []
    split = SplitSink(settings.split_by_status)
    if settings.resume and settings.output != STDOUT:
        split.reset(read_lines(settings.output))  # OUTPUT is already repaired: one per id
    elif not settings.resume:
        split.reset()
    return [split]


def _write_junit(settings: Settings) -> None:
    from .junit import write_junit
    from .report import read_records

    write_junit(settings.junit or "", read_records(settings.output), settings.fail_on)


async def _run_engine(
    settings: Settings,
    source: BinaryIO,
    done: set[str],
    sink: RecordSink,
    stats: RunStats,
    log: FilteringBoundLogger,
    view: ProgressView | None,
) -> None:
    # Imported here so `batchpoll --help` does not pay for aiohttp.
    from .client import ApiClient
    from .engine import HEARTBEAT_S, Engine

    # With the live view up, the heartbeat would only repeat what the bar shows.
    heartbeat_s = math.inf if view is not None else HEARTBEAT_S
    budget = None
    if settings.rate_store is not None:
        # First, so an unreachable store ends the run (exit 2) before any request.
        from .ratestore import SharedBudget

        budget = await SharedBudget.connect(
            settings.rate_store,
            key=settings.rate_key,
            rate=settings.rate,
            burst=settings.burst,
            log=log,
        )
    async with (
        budget or contextlib.nullcontext(),
        ApiClient(settings) as client,
        anyio.create_task_group() as tg,
    ):
        engine = Engine(
            settings,
            client.poll,
            sink,
            log=log,
            stats=stats,
            heartbeat_s=heartbeat_s,
            budget=budget,
        )
        await tg.start(_stop_on_signal, engine, stats, log, view, tg.cancel_scope)
        items = owned(aiter_items(_read_chunks(source)), settings.shard)
        await engine.run(_skip_done(items, done))
        tg.cancel_scope.cancel()


async def _stop_on_signal(
    engine: Engine,
    stats: RunStats,
    log: FilteringBoundLogger,
    view: ProgressView | None,
    run_scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT/SIGTERM stop the engine gracefully; a second one exits at once.

    After the first, the records of ids that finished still go to the sink; if its reader
    (a pipe nobody drains) holds them past ``STOP_GRACE_S``, *run_scope* is cancelled and they
    are left unwritten, counted as unfinished, so the exit still comes within 5 s.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if stats.signal is not None:
                # Every write to a file is a whole batch of lines, done before this handler
                # runs, so leaving without cleanup still leaves only whole lines behind; only
                # the terminal needs its cursor back, if it is being read.
                if view is not None:
                    view.close()
                fdio.settle(LAST_WORDS_S)
                fdio.exit_now(128 + signum)
            stats.signal = signum
            log.warning("stopping", signal=signal.Signals(signum).name)
            engine.stop()
            run_scope.deadline = min(run_scope.deadline, anyio.current_time() + STOP_GRACE_S)


def _open_input(path: str) -> BinaryIO:
    if path == STDOUT:
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"cannot read input {path}: {exc.strerror}") from None


async def _read_chunks(source: BinaryIO) -> AsyncIterator[bytes]:
    """The input's bytes as they come: from a pipe or terminal, each line as soon as it is
    written (follow mode), and a cancel (a signal) ends the wait on an idle producer."""
    name = getattr(source, "name", "input")
    try:
        async for chunk in fdio.read_chunks(source.fileno(), _CHUNK):
            yield chunk
    except OSError as exc:
        raise InputFileError(f"cannot read input {name}: {exc.strerror}") from None


async def _skip_done(items: AsyncIterator[Item], done: set[str]) -> AsyncIterator[Item]:
    async for item in items:
        key = item if isinstance(item, str) else item.text
        if key not in done:
            yield item


def _write_summary(path: str, summary: dict[str, Any]) -> None:
    try:
        Path(path).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise InputFileError(f"cannot write summary {path}: {exc.strerror}") from None


# -- simulate and demo -------------------------------------------------------------------------
