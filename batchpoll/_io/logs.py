"""structlog set-up, done once per run: JSON lines or the console renderer on stderr.

Follows structlog's performance guide (bytes out, orjson renderer, a filtering bound logger
so a disabled level costs one method call). A processor masks the API key in every string
value, whatever level and whoever built the event.

Rendered lines go through one ``_Lines`` per configuration rather than straight to a file:
structlog's own logger factories fix the file when a logger is first made (and we cache
loggers), so a live progress view could not move them later. ``routed_to`` moves every
line, from loggers made before or after, to a callable for as long as the view is up.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from .._core.redact import mask_value
from . import fdio

#: Takes one rendered log line, without its newline.
LineWriter = Callable[[str], None]


class Redactor:
    """Replaces every occurrence of the secret in the event's values (nested ones too, and
    any object whose text holds it): ``redact.mask_value``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret or None

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        if (secret := self._secret) is not None:
            for key, value in event.items():
                event[key] = mask_value(value, secret, objects=True)
        return event


def use_console(fmt: str, stream: TextIO) -> bool:
    """Whether ``auto`` (or an explicit choice) means the human renderer on *stream*."""
    if fmt == "auto":
        return stream.isatty()
    return fmt == "console"


def use_colour(stream: TextIO) -> bool:
    """Whether *stream* gets colour: a terminal, no ``NO_COLOR`` (whatever its value), no
    ``TERM=dumb``."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class _Lines:
    """Where rendered lines go: the configured stream, or a ``LineWriter`` while one is routed.

    A stream on a pipe or terminal is written through its ``fdio.Outlet``, so a reader that
    stopped reading never holds up the thread logging (the event loop's): lines wait in a
    bounded queue, or are dropped, instead.
    """

    __slots__ = ("_out", "stream", "to")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.to: LineWriter | None = None
        self._out = fdio.outlet_for(stream)

    def write_text(self, line: str) -> None:
        if (to := self.to) is not None:
            to(line)
            return
        if (out := self._out) is not None:
            out.write((line + "\n").encode(self.stream.encoding or "utf-8", "replace"))
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def write_bytes(self, line: bytes) -> None:
        if (to := self.to) is not None:
            to(line.decode("utf-8", "replace"))
            return
        # One write of a whole line, as structlog's BytesLogger does.
        if (out := self._out) is not None:
            out.write(line + b"\n")
            return
        buffer = self.stream.buffer
        buffer.write(line + b"\n")
        buffer.flush()


class _LineLogger:
    """The wrapped logger: str lines from the console renderer, bytes lines from orjson's."""

    __slots__ = ("_lines",)

    def __init__(self, lines: _Lines) -> None:
        self._lines = lines

    def msg(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._lines.write_bytes(message)
        else:
            self._lines.write_text(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


# The lines of the latest configure(); None until then (structlog's defaults print to stdout).
_current: _Lines | None = None


def configure(fmt: str, level: str, *, secret: str | None, stream: TextIO | None = None) -> None:
    """Set structlog up for this process: *fmt* json|console|auto, *level* a level name."""
    global _current
    stream = stream or sys.stderr
    lines = _current = _Lines(stream)
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        Redactor(secret),
    ]
    if use_console(fmt, stream):
        renderer: Processor = structlog.dev.ConsoleRenderer(colors=use_colour(stream))
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)

    def factory(*_args: object) -> WrappedLogger:
        return _LineLogger(lines)

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


@contextmanager
def routed_to(write_line: LineWriter) -> Iterator[None]:
    """Inside the block, every log line goes to *write_line* (one call per line, no newline).

    Redaction and level filtering happen before, as always. Without a prior ``configure``
    there is nothing of ours to route and the block changes nothing.
    """
    lines = _current
    if lines is None:
        yield
        return
    previous, lines.to = lines.to, write_line
    try:
        yield
    finally:
        lines.to = previous


def get_logger() -> FilteringBoundLogger:
    """A fresh logger proxy, so a configuration made after import takes effect."""
    logger: FilteringBoundLogger = structlog.get_logger("batchpoll")
    return logger


def library_logger() -> FilteringBoundLogger:
    """The program's structlog set-up if it made one; else warnings and worse, on stderr.

    structlog's own default prints every level to stdout, which is no place for a library's
    chatter inside somebody else's program.
    """
    if structlog.is_configured():
        return get_logger()
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
    return logger
