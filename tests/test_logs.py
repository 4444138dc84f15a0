"""Log set-up: JSON or console, and the API key masked in every value."""

from __future__ import annotations

import contextlib
import os
import threading

import orjson
import structlog
from helpers import FakeStream

from batchpoll._io.fdio import outlet_for
from batchpoll._io.logs import Redactor, configure, get_logger, use_console

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


def test_redactor_masks_a_dict_key_holding_the_key_and_keeps_other_objects() -> None:
    """A dict key holding the key is masked like a value; an object without it stays itself."""
    clean = ValueError("timeout")
    out = Redactor(SECRET)(None, "info", {"fields": {SECRET: 1}, "exc": clean})
    assert out == {"fields": {"***": 1}, "exc": clean}
    assert out["exc"] is clean


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


def _filled_pipe() -> tuple[int, int]:
    """A pipe whose write end takes no more, as when its reader stopped reading."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(w, b"x" * 4096)
    os.set_blocking(w, True)
    return r, w


def test_logging_to_a_pipe_nobody_reads_never_waits() -> None:
    """Log lines to a full pipe nobody reads return at once: queued, then dropped and counted."""
    r, w = _filled_pipe()
    stream = open(w, "w", encoding="utf-8")  # noqa: SIM115  # closed below, with r
    try:
        configure("json", "info", secret=None, stream=stream)
        log = get_logger()
        worker = threading.Thread(target=lambda: [log.info("line", n=i) for i in range(20_000)])
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "a log call waited on the pipe"
        out = outlet_for(stream)
        assert out is not None
        assert out.dropped > 0
    finally:
        structlog.reset_defaults()
        os.close(r)  # first: a write stuck on the pipe then fails and lets go
        with contextlib.suppress(OSError):
            stream.close()
