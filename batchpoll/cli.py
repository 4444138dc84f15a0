"""argv → exit code. The only place an error becomes an exit code (see ``errors``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import __version__
from .config import Settings, describe, load_settings
from .errors import BatchpollError, UsageError

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


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
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
    if "simulate" in (argv if argv is not None else sys.argv[1:]):
        # The simulator owns the list of its knobs; importing it (and aiohttp's server) only
        # for `simulate` keeps every other command starting fast.
        from .simulator import add_knobs

        add_knobs(sim)
    demo = sub.add_parser("demo", help="simulator + run in one process; prints a summary")
    demo.add_argument("--ids", type=int, default=2000, metavar="N", help="how many ids (2000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--dir", default="batchpoll-demo", help="where the ids and results go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser(argv).parse_args(argv)
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
    from .runner import run_settings

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
