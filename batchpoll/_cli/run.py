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
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.abc
import orjson
from structlog.typing import FilteringBoundLogger

from .._core.config import Settings, describe
from .._core.limits import fit_open_files
from .._core.redact import mask_value, shown
from .._core.shard import owned
from .._core.source import Item, aiter_items, item_key
from .._core.stats import RunStats, exit_code
from .._io import fdio
from .._io.outfile.append import LineSink
from .._io.outfile.lock import OutputLock
from .._io.outfile.plan import STDIO as STDOUT
from .._io.outfile.plan import RunFiles, check_replaceable, check_run_files
from .._io.outfile.read import read_lines, read_records
from .._io.outfile.repair import Prior, prepare_output
from .._io.outfile.replace import replace_atomically
from .._io.outfile.split import SplitSink, check_split_files, split_names
from .._io.sink import RecordSink, TeeSink
from ..errors import SIGPIPE_EXIT, BatchpollError, InputFileError, UsageError, find_error

if TYPE_CHECKING:
    from .._io.engine import Engine
    from .._views.progress import ProgressView

_CHUNK = 64 * 1024
#: Seconds the sink may take, after the first signal, to write the records of finished ids.
STOP_GRACE_S = 3.0
#: Seconds a second signal waits for the terminal to take the view's last frame.
LAST_WORDS_S = 0.2
#: The cyclic collector's first threshold during a run (CPython's default is 700).
GC_GEN0_THRESHOLD = 7000


class SignalExit(BaseException):
    """SIGTERM (or SIGINT) outside the event loop: unwinds, so every ``finally`` runs (a
    half-written temporary file is removed, locks are let go), then exits 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signal_exit(signum: int, _frame: object) -> None:
    raise SignalExit(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``SignalExit`` while the run prepares and reports; inside the
    event loop ``_stop_on_signal`` answers them instead (asyncio installs its own)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, _raise_signal_exit)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _signals_wait_for_reports(deferred: list[int]) -> None:
    """From now on a first SIGINT/SIGTERM waits for the reports (its number is put in
    *deferred*) and a second one ends the process at once, as ever."""

    def wait_for_the_reports(signum: int, _frame: object) -> None:
        if deferred:
            raise SignalExit(signum)
        deferred.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, wait_for_the_reports)


def run_settings(settings: Settings, input_path: str, *, overwrite: bool = False) -> int:
    """Run one poll job as the CLI does; return its exit code (see ``_run_settings``).

    A signal before or after the polling (a long rewrite of OUTPUT, say) still leaves every
    file whole and exits 128+N.
    """
    try:
        with _signals_unwind():
            return _run_settings(settings, input_path, overwrite=overwrite)
    except SignalExit as stopped:
        return 128 + stopped.signum


def _run_settings(settings: Settings, input_path: str, *, overwrite: bool) -> int:
    """Run one poll job as the CLI does; return its exit code.

    Every file the run would write is checked before the first request (``_check_files``).
    However the run ends (done, some ids failed, the key refused, a signal, an internal
    error), the records received are in OUTPUT and the summary and JUnit files are written;
    an error is raised again after that, for the CLI to report.
    """
    from .._io import logs

    if settings.junit and settings.output == STDOUT:
        raise UsageError("--junit needs -o OUTPUT: the report is built from the records written")
    if settings.resume and overwrite:
        raise UsageError(
            "--resume keeps what OUTPUT holds and --overwrite empties it: give one of them"
        )
    if settings.output == STDOUT and (settings.resume or overwrite):
        # On stdout there is nothing to read back: the records would all be written again.
        flag = "--resume" if settings.resume else "--overwrite"
        raise UsageError(f"{flag} needs -o OUTPUT: it works on a file it can read back")
    secret = settings.api_key.reveal() if settings.api_key else None
    logs.configure(settings.log_format, settings.log_level, secret=secret)
    log = logs.get_logger()
    if (raised := fit_open_files(settings)) is not None:
        log.info("open_files_raised", soft_before=raised[0], soft=raised[1])
    for warning in settings.warnings:
        log.warning("config_warning", message=warning)
    _check_files(settings, input_path, overwrite=overwrite)
    source = _open_input(input_path)
    lock: OutputLock | None = None
    split: SplitSink | None = None
    reports: dict[str, OutputLock] = {}
    started = False
    try:
        # Every lock before anything is changed: a run refused for a lock leaves all as it was.
        if settings.output != STDOUT:
            lock = OutputLock(settings.output, "output")
        elif _regular_file(1):
            lock = OutputLock("(standard output)", "output", fd=1)  # `>> out.jsonl`: one writer
        if settings.split_by_status is not None:
            split = SplitSink(settings.split_by_status, secret=secret)
        # The reports are this run's from now on too: no other run may take them as OUTPUT
        # (nor this one theirs) while it goes on, only to be replaced at the end.
        for part, path in (("--summary", settings.summary), ("--junit", settings.junit)):
            if path is not None:
                reports[part] = OutputLock(path, part)
        prior = Prior()
        if lock is not None and settings.output != STDOUT:
            prior = prepare_output(
                settings.output,
                lock,
                resume=settings.resume,
                overwrite=overwrite,
                retry_statuses=settings.retry_statuses,
            )
        if split is not None:
            # Rebuilt from OUTPUT as repaired, so that they too hold one record per id.
            resumed = settings.resume and settings.output != STDOUT
            split.reset(read_lines(settings.output) if resumed else ())
        started = True
        return _run_and_report(settings, source, lock, split, reports, prior, secret, log)
    finally:
        source.close()
        if split is not None:
            split.close()
        # Refused before it began: the files its locks created, still empty, go again.
        for held in [*reports.values(), *([lock] if lock is not None else [])]:
            if started:
                held.close()
            else:
                held.discard()


def _regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _check_files(settings: Settings, input_path: str, *, overwrite: bool) -> None:
    """Refuse, before any request, a run that would write where it must not or cannot."""
    check_run_files(
        RunFiles(
            input=input_path,
            output=settings.output,
            summary=settings.summary,
            junit=settings.junit,
            split_dir=settings.split_by_status,
            split_names=split_names(),
        )
    )
    if settings.split_by_status is not None:
        check_split_files(settings.split_by_status, keep=settings.resume or overwrite)
    if settings.summary is not None:
        check_replaceable(settings.summary, "--summary", looks_like_summary)
    if settings.junit is not None:
        from .._views.junit import looks_like_junit

        check_replaceable(settings.junit, "--junit", looks_like_junit)


def _run_and_report(
    settings: Settings,
    source: BinaryIO,
    lock: OutputLock | None,
    split: SplitSink | None,
    reports: dict[str, OutputLock],
    prior: Prior,
    secret: str | None,
    log: FilteringBoundLogger,
) -> int:
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
    sink = LineSink(
        settings.output,
        fsync=settings.fsync,
        secret=secret,
        fd=None if lock is None or settings.output == STDOUT else lock.fd,
    )
    from .._views import progress

    live = progress.wanted(settings.progress, sys.stderr)
    view = progress.ProgressView(stats) if live else None
    failure: BaseException | None = None
    try:
        with view or contextlib.nullcontext(), collector_tuned():
            anyio.run(
                _run_engine,
                settings,
                source,
                prior.done,
                TeeSink(sink) if split is None else TeeSink(sink, split),
                stats,
                log,
                view,
                backend_options=loop_options(),
            )
    except BaseException as exc:  # reported below, once the summary and JUnit are written
        failure = exc
    finally:
        sink.close()
        # asyncio put back the default actions when its loop closed; the polling is over, and
        # the summary and JUnit are written whatever comes now.
        deferred: list[int] = []
        _signals_wait_for_reports(deferred)
    code = _exit_code(stats, settings, failure)
    summary = stats.summary()
    summary["resumed"] = stats.resumed
    summary["exit_code"] = code
    if secret is not None:
        summary = mask_value(summary, secret)
    log.info("run_finished", **summary)
    try:
        if settings.summary:
            _write_summary(settings.summary, summary, reports["--summary"])
        if settings.junit:
            _write_junit(settings, secret, reports["--junit"])
    except InputFileError:
        if failure is None:
            raise
    if deferred and settings.summary:
        # A signal came while the reports were written: they are whole, and the summary says
        # how the process ends.
        summary["exit_code"] = 128 + deferred[0]
        _write_summary(settings.summary, summary, reports["--summary"])
    if deferred:
        raise SignalExit(deferred[0])
    if failure is not None:
        raise failure
    if lost := fdio.dropped():
        log.warning("log_lines_dropped", writes=lost, reason="stderr was not being read")
    if sys.stderr.isatty():
        from .._views.report import render

        fdio.write_text(sys.stderr, render(summary, width=shutil.get_terminal_size().columns))
    # A terminal or pipe nobody reads keeps what is left; nothing at exit waits on it.
    fdio.settle(fdio.EXIT_WAIT_S)
    return 128 + deferred[0] if deferred else code


def _exit_code(stats: RunStats, settings: Settings, failure: BaseException | None) -> int:
    """The run's exit code: a signal's 128+N, an error's own, 1 for an internal error."""
    if stats.signal is not None:
        return 128 + stats.signal
    if failure is None:
        return exit_code(stats.by_status, settings.fail_on)
    if find_error(failure, BrokenPipeError) is not None:
        return SIGPIPE_EXIT  # the CLI's answer to a reader that went away
    if (error := find_error(failure, BatchpollError)) is not None:
        return error.exit_code
    if (stopped := find_error(failure, SignalExit)) is not None:
        return 128 + stopped.signum
    if find_error(failure, KeyboardInterrupt) is not None:
        return 128 + signal.SIGINT
    return 1


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


def _write_junit(settings: Settings, secret: str | None, lock: OutputLock) -> None:
    from .._views.junit import write_junit

    records = read_records(settings.output)
    if secret is not None:
        records = (mask_value(record, secret) for record in records)
    write_junit(settings.junit or "", records, settings.fail_on, keep_open=lock.adopt)


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
    from .._io.client import ApiClient
    from .._io.engine import Engine
    from .._io.heartbeat import HEARTBEAT_S

    # With the live view up, the heartbeat would only repeat what the bar shows.
    heartbeat_s = math.inf if view is not None else HEARTBEAT_S
    budget = None
    if settings.rate_store is not None:
        # First, so an unreachable store ends the run (exit 2) before any request.
        from .._io.ratestore import SharedBudget

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
        if budget is not None:
            # Keeps a running pause in the store, which may lose it by restarting empty.
            tg.start_soon(budget.keep_pause)
        forbidden = settings.api_key.reveal() if settings.api_key else None
        items = owned(aiter_items(_read_chunks(source), forbidden=forbidden), settings.shard)
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
        # shown(): a key pasted where INPUT goes must not come back in the message.
        raise InputFileError(f"cannot read input {shown(path)}: {exc.strerror}") from None


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
        if item_key(item) not in done:
            yield item


def _write_summary(path: str, summary: dict[str, Any], lock: OutputLock) -> None:
    """Replace *path* with the summary as indented JSON, whole (``replace_atomically``)."""
    try:
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n"
        replace_atomically(path, data, keep_open=lock.adopt)
    except OSError as exc:
        raise InputFileError(f"cannot write summary {path}: {exc.strerror or exc}") from None


def looks_like_summary(head: bytes) -> bool:
    """Whether a file's first bytes are a summary batchpoll wrote (so it may replace it)."""
    try:
        data = orjson.loads(head)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "exit_code" in data and "by_status" in data


# -- simulate and demo -------------------------------------------------------------------------
