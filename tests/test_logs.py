"""Log set-up: JSON or console, and the API key masked in every value."""

from __future__ import annotations

import orjson
import structlog
from helpers import FakeStream

from batchpoll.logs import Redactor, configure, get_logger, use_console

SECRET = "sk-live-0123456789"


def test_auto_is_console_on_a_terminal_and_json_elsewhere() -> None:
    """auto picks the console renderer only when the stream is a terminal."""
    assert use_console("auto", FakeStream(tty=True))
    assert not use_console("auto", FakeStream(tty=False))
    assert use_console("console", FakeStream(tty=False))
    assert not use_console("json", FakeStream(tty=True))


def test_redactor_masks_the_key_in_nested_values() -> None:
    """The key is replaced wherever it appears: strings, dicts, lists, other objects."""
    event = {
        "event": f"oops {SECRET}",
        "headers": {"X-CEKURA-API-KEY": SECRET},
        "items": [SECRET, 3],
        "exc": ValueError(SECRET),
        "n": 5,
    }
    out = Redactor(SECRET)(None, "info", event)
    assert SECRET not in repr(out)
    assert out["n"] == 5
    assert out["headers"] == {"X-CEKURA-API-KEY": "***"}


def test_json_lines_at_the_chosen_level_with_the_key_masked() -> None:
    """JSON logs are one object per line, filtered by level, with the key masked."""
    stream = FakeStream(tty=False)
    try:
        configure("json", "warning", secret=SECRET, stream=stream)
        log = get_logger()
        log.info("hidden", key=SECRET)
        log.warning("shown", key=SECRET, n=2)
        lines = stream.raw.getvalue().splitlines()
    finally:
        structlog.reset_defaults()
    assert len(lines) == 1
    event = orjson.loads(lines[0])
    assert event["event"] == "shown"
    assert event["key"] == "***"
    assert event["level"] == "warning"
