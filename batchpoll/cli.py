"""argv → exit code. The only place an error becomes an exit code (see ``errors``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import anyio
import anyio.abc
import orjson
from structlog.typing import FilteringBoundLogger

from . import __version__
from .config import Settings, describe, load_settings
from .errors import BatchpollError, InputFileError, UsageError
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
SIGPIPE_EXIT = 141
_E = TypeVar("_E", bound=BaseException)


def _run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="poll every id in INPUT until it ends", argument_default=argparse.SUPPRESS
    )
    p.add_argument("input", metavar="INPUT", help="file of progress ids, or - for stdin")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty OUTPUT first")
    _settings_options(p)
    c = sub.add_parser(
        "config",
        help="print the effective settings and where each came from",
        argument_default=argparse.SUPPRESS,
    )
    _settings_options(c)
    r = sub.add_parser("report", help="summarise an OUTPUT file; list its failed ids")
    r.add_argument("output", metavar="OUTPUT", help="a JSON-lines file batchpoll wrote (or .gz)")
    r.add_argument("--json", action="store_true", help="the summary as JSON, for machines")
    r.add_argument("--fail-on", metavar="LIST", help="statuses counted as failures, or none")


def _settings_options(p: argparse.ArgumentParser) -> None:
    """The options that make a ``Settings``, shared by ``run`` and ``config``."""
    p.add_argument("-o", "--output", metavar="PATH", help="JSON-lines sink; - is stdout (default)")
    p.add_argument("--config", metavar="PATH", help="TOML file of settings (see configs/)")
    p.add_argument("--api-key-file", metavar="PATH", help="read the API key from this file")
    p.add_argument("--base-url", metavar="URL", help="API origin (env CEKURA_API_URL)")
    p.add_argument("--path", metavar="P", help="progress endpoint path")
    p.add_argument("--concurrency", metavar="N", help="most requests in flight (32)")
    p.add_argument("--rate", metavar="R", help="most requests per second, all ids together (10)")
    p.add_argument("--burst", metavar="B", help="requests allowed back-to-back above the rate (1)")
    p.add_argument("--interval", metavar="S", help="first wait between polls of one id (3)")
    p.add_argument("--max-interval", metavar="S", help="cap of the growing wait (30)")
    p.add_argument("--timeout", metavar="S", help="per-id budget from its first poll (3600)")
    p.add_argument("--deadline", metavar="S", help="whole-run budget (none)")
    p.add_argument("--request-timeout", metavar="S", help="budget of one HTTP attempt (30)")
    p.add_argument(
        "--max-retries", metavar="N", help="transient failures in a row that end an id (8)"
    )
    p.add_argument("--resume", action="store_true", help="keep what OUTPUT holds, poll the rest")
    p.add_argument("--retry-statuses", metavar="LIST", help="with --resume: re-poll these statuses")
    p.add_argument("--fail-on", metavar="LIST", help="statuses that make the exit code 1, or none")
    p.add_argument("--summary", metavar="PATH", help="write the run summary as JSON")
    p.add_argument("--log-format", metavar="FMT", help="json | console | auto")
    p.add_argument("--log-level", metavar="LEVEL", help="debug | info | warning | error")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress view")
    p.add_argument("--junit", metavar="PATH", help="write a JUnit XML report at the end")
    p.add_argument("--split-by-status", metavar="DIR", help="also write DIR/<status>.jsonl")
    p.add_argument("--fsync", action="store_true", help="make every write to OUTPUT durable")
    p.add_argument("--shard", metavar="K/N", help="poll only the ids of shard K of N")
    p.add_argument(
        "--rate-store", metavar="URL", help="redis:// URL sharing the rate budget across processes"
    )
    p.add_argument("--rate-key", metavar="KEY", help="processes with one key share one budget")
    p.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http:// base URL that is not loopback",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchpoll",
        description="Poll many Cekura progress ids at once, within the API's limits.",
    )
    parser.add_argument("--version", action="version", version=f"batchpoll {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub)
    sim = sub.add_parser("simulate", help="serve a fake Cekura API on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    from .simulator import add_knobs  # the simulator owns the list of its knobs

    add_knobs(sim)
    demo = sub.add_parser("demo", help="simulator + run in one process; prints a summary")
    demo.add_argument("--ids", type=int, default=2000, metavar="N", help="how many ids (2000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--dir", default="batchpoll-demo", help="where the ids and results go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if (broken := _find(exc, BrokenPipeError)) is not None:
            del broken
            # Like other Unix tools: a reader that went away is no error of ours to report.
            _silence_stdout()
            return SIGPIPE_EXIT
        error = _find(exc, BatchpollError)
        if error is None:
            raise
        print(f"batchpoll: error: {error}", file=sys.stderr)
        return error.exit_code


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first *kind* in *exc*, looking inside exception groups (task groups raise those)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# -- run ---------------------------------------------------------------------------------------


def _flags(args: argparse.Namespace) -> dict[str, object]:
    skip = {"command", "input", "config", "api_key_file", "overwrite", "json"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _settings(args: argparse.Namespace, *, require_key: bool = True) -> Settings:
    return load_settings(
        _flags(args),
        os.environ,
        getattr(args, "config", None),
        getattr(args, "api_key_file", None),
        require_key=require_key,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return run_settings(settings, args.input, overwrite=getattr(args, "overwrite", False))


def _cmd_config(args: argparse.Namespace) -> int:
    """Print every setting with its value and source; the key masked, never required."""
    settings = _settings(args, require_key=False)
    described = describe(settings)
    width = max(map(len, described))
    for name, value in described.items():
        if name in ("api_key", "api_key_source"):
            continue
        source = settings.sources.get(name, "default")
        shown = "none" if value is None else orjson.dumps(value).decode()
        print(f"{name:<{width}} = {shown:<40} # {source}")
    key = "*** (" + settings.api_key_source + ")" if settings.api_key else "none found"
    print(f"{'api_key':<{width}} = {key}")
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .config import parse_statuses
    from .report import report_main

    fail_on = Settings().fail_on
    if args.fail_on is not None:
        fail_on = parse_statuses(args.fail_on, "flag --fail-on")
    return report_main(args.output, as_json=args.json, fail_on=fail_on, out=sys.stdout)


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
        with view or contextlib.nullcontext():
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
    if sys.stderr.isatty():
        from .report import render

        print(render(summary, width=shutil.get_terminal_size().columns), file=sys.stderr)
    return code


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
        await tg.start(_stop_on_signal, engine, stats, log, view)
        items = owned(aiter_items(_read_chunks(source)), settings.shard)
        await engine.run(_skip_done(items, done))
        tg.cancel_scope.cancel()


async def _stop_on_signal(
    engine: Engine,
    stats: RunStats,
    log: FilteringBoundLogger,
    view: ProgressView | None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT/SIGTERM stop the engine gracefully; a second one exits at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if stats.signal is not None:
                # Every write is a whole batch of lines, done before this handler runs, so
                # leaving without cleanup still leaves only whole lines behind; only the
                # terminal needs its cursor back.
                if view is not None:
                    view.close()
                os._exit(128 + signum)
            stats.signal = signum
            log.warning("stopping", signal=signal.Signals(signum).name)
            engine.stop()


def _open_input(path: str) -> BinaryIO:
    if path == STDOUT:
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"cannot read input {path}: {exc.strerror}") from None


async def _read_chunks(source: BinaryIO) -> AsyncIterator[bytes]:
    name = getattr(source, "name", "input")
    afile = anyio.wrap_file(source)
    try:
        while chunk := await afile.read(_CHUNK):
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


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import serve, settings_from_args

    try:
        serve(settings_from_args(args), host=args.host, port=args.port)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(ids=args.ids, seed=args.seed, directory=Path(args.dir))


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "config": _cmd_config,
    "report": _cmd_report,
    "simulate": _cmd_simulate,
    "demo": _cmd_demo,
}
