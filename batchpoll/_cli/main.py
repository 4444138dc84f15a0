"""argv → exit code. The only place an error becomes an exit code (see ``errors``)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .._core.config import (
    HIDDEN,
    KEY_PLACES,
    KEY_SHAPE,
    MIN_KEY_CHARS,
    SHOWN_CHARS,
    Secret,
    Settings,
    describe,
    load_settings,
    shown,
)
from .._version import __version__
from ..errors import SIGPIPE_EXIT, BatchpollError, InputFileError, UsageError, find_error

#: Which of the standard descriptors (0, 1, 2) were closed when ``main`` started; each now
#: holds os.devnull. Set once per ``main``, read by ``run`` to refuse ``-`` on a closed one.
closed_std: frozenset[int] = frozenset()

#: The API key of the settings the running command loaded, for ``main`` to mask out of an
#: error: one raised after loading may quote a path or a value the key was typed into.
_loaded_key: Secret | None = None

# Option names that can only mean "here is my key" (compared lower-case, without - and _).
_KEY_FLAGS = frozenset({"apikey", "cekuraapikey", "key", "apitoken", "token", "secret"})


class _Parser(argparse.ArgumentParser):
    """argparse that never echoes what the user typed and never completes a prefix.

    Stock argparse quotes bad values back (``invalid choice: 'sk_live_X'``, ``unrecognized
    arguments: --apikey sk_live_X``) and takes a prefix for the option it starts
    (``--api-key`` became ``--api-key-file``). A value on a command line may be a key, and
    these messages end up in CI logs. Every error here is a UsageError naming the option, never
    its value; subparsers are made of this class too (``add_parser`` uses the parent's).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        kwargs["exit_on_error"] = False  # ArgumentError reaches parse_known_args, below
        self.option_names: list[str] = []  # before super(), which adds -h/--help
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.option_names.extend(action.option_strings)
        return action

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse the whole command line; UsageError for anything left over or wrong."""
        argv = list(sys.argv[1:] if args is None else args)
        _refuse_key_flags(argv)
        self._check_command(argv)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            command = self.commands.get(getattr(parsed, "command", None) or "")
            raise UsageError(_leftovers(extras, command or self, self.option_names))
        return parsed

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as exc:
            raise UsageError(f"{_explain(exc)}; see {self.prog} --help") from None

    def error(self, message: str) -> NoReturn:
        # Reached for argparse's own checks after parsing, like "the following arguments are
        # required: INPUT", which name arguments. Any other text is not passed on, in case.
        safe = message.startswith(("the following arguments are required", "one of the argu"))
        text = message if safe else "the command line cannot be parsed"
        raise UsageError(f"{text}; see {self.prog} --help")

    def _check_command(self, argv: Sequence[str]) -> None:
        # The command is the first word that is not an option (the top parser's options take
        # no value). Checked here, because argparse's own message quotes the word back.
        word = next((a for a in argv if not a.startswith("-")), None)
        if word is None or not self.commands or word in self.commands:
            return
        close = difflib.get_close_matches(word, list(self.commands), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        known = ", ".join(self.commands)
        raise UsageError(f"unknown command (choose from {known}){hint}")


def _explain(exc: argparse.ArgumentError) -> str:
    """What went wrong with one argument, without the value argparse would quote."""
    name, message = exc.argument_name, exc.message
    where = f"argument {name}: " if name else ""
    if message.startswith("invalid choice"):
        choices = message.rpartition("(choose from ")[2].rstrip(")").replace("'", "")
        return f"{where}invalid choice (choose from {choices})"
    if match := re.match(r"invalid (\w+) value", message):
        return f"{where}not a valid {match[1]}"
    if message.startswith("ignored explicit argument"):
        return f"{where}takes no value"
    if message.startswith(("expected ", "not allowed with argument")):
        return where + message
    return f"{where}invalid value"


def _option_name(arg: str) -> str:
    """The option an unknown argument names: before any ``=``, or a short option's two
    characters (``-xVALUE``)."""
    name = arg.partition("=")[0] if arg.startswith("--") else arg[:2]
    return str(shown(name))[:40]


def _is_option(arg: str) -> bool:
    # "-" is stdin and "-5" a negative number: argparse takes both as plain arguments.
    return arg.startswith("-") and arg != "-" and not re.match(r"-\.?\d", arg)


def _refuse_key_flags(argv: Sequence[str]) -> None:
    for arg in argv:
        if arg == "--":
            return
        if _is_option(arg) and re.sub(r"[-_]", "", _option_name(arg).lower()) in _KEY_FLAGS:
            raise UsageError(
                f"{_option_name(arg)}: batchpoll takes no API key on the command line, where "
                f"every user of this machine can read it (the value is not shown): {KEY_PLACES}"
            )


def _leftovers(extras: Sequence[str], parser: _Parser, top_options: Sequence[str]) -> str:
    """The message for arguments no option took: the unknown options by name, with the
    closest known one; other arguments only counted."""
    options = [_option_name(a) for a in extras if _is_option(a)]
    # A word right after an unknown option is most likely its value: not worth a mention.
    others = sum(
        1
        for i, arg in enumerate(extras)
        if not _is_option(arg)
        and not (i and _is_option(extras[i - 1]) and "=" not in extras[i - 1])
    )
    parts = []
    for name in dict.fromkeys(options):
        close = difflib.get_close_matches(name, [*parser.option_names, *top_options], n=1)
        parts.append(f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    if others:
        parts.append(
            f"{others} unexpected argument{'s' if others > 1 else ''} "
            "(not shown, in case one is a secret)"
        )
    return f"{'; '.join(parts)}; see {parser.prog} --help"


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


def _parser(argv: Sequence[str] | None = None) -> _Parser:
    parser = _Parser(
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
        from ..simulator import add_knobs

        add_knobs(sim)
    demo = sub.add_parser("demo", help="simulator + run in one process; prints a summary")
    demo.add_argument("--ids", type=int, default=2000, metavar="N", help="how many ids (2000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--dir", default="batchpoll-demo", help="where the ids and results go")
    parser.commands = {name: p for name, p in sub.choices.items() if isinstance(p, _Parser)}
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    global closed_std, _loaded_key
    closed_std = _occupy_closed_std()
    _loaded_key = None
    try:
        args = _parser(argv).parse_args(argv)
        command: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
        return command(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if (broken := find_error(exc, BrokenPipeError)) is not None:
            del broken
            # Like other Unix tools: a reader that went away is no error of ours to report.
            _silence_stdout()
            return SIGPIPE_EXIT
        error = find_error(exc, BatchpollError)
        if error is None:
            raise
        print(f"batchpoll: error: {safe_message(str(error), _known_keys())}", file=sys.stderr)
        return error.exit_code


def _known_keys() -> list[str]:
    """The keys an error message must not show: the loaded one, and the environment's."""
    keys = [_loaded_key.reveal()] if _loaded_key is not None else []
    if env_key := os.environ.get("CEKURA_API_KEY", "").strip():
        keys.append(env_key)
    return keys


# A word of an error message, for KEY_SHAPE: what lies between whitespace, path separators,
# quotes and the punctuation messages put around values. Dots stay inside: see _hide_word.
_WORD = re.compile(r"[^\s/\\'\"`,;:()\[\]{}<>=]+")
_LONG_RUN = re.compile(rf"\S{{{SHOWN_CHARS + 1},}}")
# A run ``shown`` cut already (up to a short label like ``output='`` before it, and the
# marker's "...[LENGTH" after): cutting it again would tell the wrong length.
_CUT_BY_SHOWN = re.compile(rf"\S{{0,{SHOWN_CHARS + 60}}}\.\.\.\[\d{{1,12}}")
#: The most characters of one error message; the rest is cut, with the length told.
MAX_MESSAGE_CHARS = 2000


def safe_message(message: str, keys: Sequence[str] = ()) -> str:
    """*message* fit for a terminal or a CI log: every occurrence of each of *keys* (of
    ``MIN_KEY_CHARS`` or more) as ``***`` whatever its case, every key-shaped word hidden
    (a path's last part too; its directories are kept), every run of more than
    ``SHOWN_CHARS`` non-space characters cut, and the whole cut at ``MAX_MESSAGE_CHARS``.

    Errors are built in many modules from what the user typed (paths, values), and a key is
    typed where a path goes often enough; this is the one net under all of them.
    """
    for key in keys:
        if len(key) >= MIN_KEY_CHARS:
            # IGNORECASE: some layers lowercase what they echo (a URL's host, a status).
            message = re.sub(re.escape(key), "***", message, flags=re.IGNORECASE)
    message = _WORD.sub(_hide_word, message)
    message = _LONG_RUN.sub(_cut_run, message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}...[{len(message)} characters in all]"
    return message


def _hide_word(match: re.Match[str]) -> str:
    word = match[0]
    core = word.rstrip(".")  # a sentence's full stop is not part of the word
    # A dot inside makes it a file name (results-2024.jsonl) or a number, never hidden.
    if "." in core or not KEY_SHAPE.fullmatch(core):
        return word
    # A directory on the way to a file is kept (CI workspaces and temporary directories are
    # named like job_12345_0): a key typed where a path goes is the path's last part.
    after = match.string[match.end() : match.end() + 2]
    if len(after) == 2 and after[0] in "/\\" and _WORD.match(after[1]):
        return word
    return HIDDEN + word[len(core) :]


def _cut_run(match: re.Match[str]) -> str:
    run = match[0]
    if _CUT_BY_SHOWN.fullmatch(run):
        return run
    return f"{run[:SHOWN_CHARS]}...[{len(run)} characters in all]"


def _occupy_closed_std() -> frozenset[int]:
    """Put os.devnull on each of descriptors 0, 1, 2 that is closed; return which were.

    Python starts with ``sys.stdin``/``stdout``/``stderr`` None for a closed descriptor, and
    the next file opened takes the lowest free number: OUTPUT could become descriptor 2 and
    receive the logs, or ``print(file=sys.stderr)`` could fall back to stdout. Taken by
    os.devnull, each stays harmless; ``run`` refuses ``-`` on a closed one.
    """
    closed = set()
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            # Lower descriptors are open by now, so this lands on fd itself or above it.
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.add(fd)
        if getattr(sys, name) is None:
            # Closed at start, then perhaps taken by a file opened since: not ours to reuse.
            # The stream lives as long as the process, like the one Python would have made.
            target: int | str = fd if fd in closed else os.devnull
            mode, buffering = ("r", -1) if fd == 0 else ("w", 1)  # 1: line-buffered
            stream = open(  # noqa: SIM115
                target,
                mode,
                buffering,
                encoding="utf-8",
                errors="backslashreplace",
                closefd=fd not in closed,  # a path is opened and owned; fd is borrowed
            )
            setattr(sys, name, stream)
            closed.add(fd)
    return frozenset(closed)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# -- run ---------------------------------------------------------------------------------------


def _flags(args: argparse.Namespace) -> dict[str, object]:
    skip = {"command", "input", "config", "api_key_file", "overwrite", "json"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _settings(args: argparse.Namespace, *, require_key: bool = True) -> Settings:
    global _loaded_key
    settings = load_settings(
        _flags(args),
        os.environ,
        getattr(args, "config", None),
        getattr(args, "api_key_file", None),
        require_key=require_key,
    )
    _loaded_key = settings.api_key
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run_settings

    if args.input == "-" and 0 in closed_std:
        raise InputFileError("INPUT is - but stdin is closed: give a file of ids, or - < ids.txt")
    settings = _settings(args)
    if settings.output == "-" and 1 in closed_std:
        raise InputFileError("OUTPUT is - (stdout) but stdout is closed: give -o PATH")
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
        # Values are what the user typed, so they get the error messages' net: the key
        # masked (a key typed as -o or --rate-key), long runs cut.
        shown = "none" if value is None else orjson.dumps(value).decode()
        shown = safe_message(shown, _known_keys())
        print(f"{name:<{width}} = {shown:<40} # {source}")
    key = "*** (" + settings.api_key_source + ")" if settings.api_key else "none found"
    print(f"{'api_key':<{width}} = {key}")
    for warning in settings.warnings:
        print(f"warning: {safe_message(warning, _known_keys())}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .._core.config import parse_statuses
    from .._views.report import report_main

    fail_on = Settings().fail_on
    if args.fail_on is not None:
        fail_on = parse_statuses(args.fail_on, "flag --fail-on")
    return report_main(args.output, as_json=args.json, fail_on=fail_on, out=sys.stdout)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..simulator import serve, settings_from_args

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
