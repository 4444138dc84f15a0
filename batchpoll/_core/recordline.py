"""What a batchpoll record line is, decided in one place (pure: bytes in, answers out).

Everything that reads OUTPUT back (``--resume``, the split files, JUnit, ``batchpoll report``)
asks these functions, so they all agree on which lines are records and which torn tails a
killed run can have left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from ..records import ALL_STATUSES, record_key

#: How every record line batchpoll writes begins (orjson keeps the keys' order).
RECORD_START: Final = b'{"progress_id":'


def record_fields(obj: object) -> tuple[str, str] | None:
    """The ``progress_id`` and ``status`` of a record-shaped mapping (both strings), or None.

    The shape alone: whether the status is one batchpoll writes is ``parse_record``'s test.
    """
    if not isinstance(obj, Mapping):
        return None
    pid, status = obj.get("progress_id"), obj.get("status")
    if not isinstance(pid, str) or not isinstance(status, str):
        return None
    return pid, status


def parse_record(line: bytes) -> dict[str, Any] | None:
    """A record line's object, or None when the line is not a batchpoll record (a JSON
    object with a string ``progress_id`` and one of batchpoll's statuses)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    fields = record_fields(obj)
    if fields is None or fields[1] not in ALL_STATUSES:
        return None
    return obj


def record_of(line: bytes) -> tuple[str, str] | None:
    """The key (``records.record_key``) and status of a record line, or None."""
    obj = parse_record(line)
    if obj is None:
        return None
    return record_key(obj["progress_id"], obj["status"], obj.get("input_sha256")), obj["status"]


def could_be_torn(text: bytes) -> bool:
    """Whether *text*, found after the last whole line (or whole gzip member), can be what a
    killed batchpoll left: whole record lines, then the start of one.

    This is the one rule for a torn tail: a resume cuts such a tail and refuses any other,
    and a report passes over the same bytes. A complete JSON value that is not a record
    (``{"progress_id":"x"}`` and no newline) is not the start of anything batchpoll writes,
    so it is never cut.
    """
    *whole, partial = text.split(b"\n")
    if any(parse_record(line) is None for line in whole):
        return False
    try:
        orjson.loads(partial)
    except orjson.JSONDecodeError:
        return partial.startswith(RECORD_START) or RECORD_START.startswith(partial)
    return parse_record(partial) is not None
