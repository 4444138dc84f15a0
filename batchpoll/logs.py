"""structlog set-up, done once per run: JSON lines or the console renderer on stderr.

Follows structlog's performance guide (bytes logger, orjson renderer, a filtering bound logger
so a disabled level costs one method call). A processor masks the API key in every string
value, whatever level and whoever built the event.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

MASK = "***"


class Redactor:
    """Replaces every occurrence of the secret in string values (nested ones too)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret or None

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        if self._secret is not None:
            for key, value in event.items():
                event[key] = self._clean(value)
        return event

    def _clean(self, value: Any) -> Any:
        secret = self._secret
        assert secret is not None
        if isinstance(value, str):
            return value.replace(secret, MASK) if secret in value else value
        if isinstance(value, MutableMapping):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = str(value)
        return text.replace(secret, MASK) if secret in text else value


def use_console(fmt: str, stream: TextIO) -> bool:
    """Whether ``auto`` (or an explicit choice) means the human renderer on *stream*."""
    if fmt == "auto":
        return stream.isatty()
    return fmt == "console"


def configure(fmt: str, level: str, *, secret: str | None, stream: TextIO | None = None) -> None:
    """Set structlog up for this process: *fmt* json|console|auto, *level* a level name."""
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        Redactor(secret),
    ]
    if use_console(fmt, stream):
        colors = (
            stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )
        renderer: Processor = structlog.dev.ConsoleRenderer(colors=colors)
        factory: Any = structlog.PrintLoggerFactory(file=stream)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(file=stream.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger() -> FilteringBoundLogger:
    """A fresh logger proxy, so a configuration made after import takes effect."""
    logger: FilteringBoundLogger = structlog.get_logger("batchpoll")
    return logger
