"""Reading OUTPUT back: its whole lines (plain, gzip, standard input) and its records.

One reader for everything that reads OUTPUT (``--resume``, ``--split-by-status`` rebuilt from
it, JUnit, ``batchpoll report``), so they all see the same records: plain or gzip, a torn tail
set apart (``Tail``), and one record per key, the first (``read_records``).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, TypeVar

from ..._core.recordline import could_be_torn, parse_record, record_fields
from ...errors import InputFileError
from ...records import record_key
from .plan import STDIO

_CHUNK: Final = 64 * 1024
_R = TypeVar("_R", bound=Mapping[str, Any])
#: The longest line a reader takes for a record; longer is not batchpoll's (bodies are capped).
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
#: The most text one gzip member may hold. batchpoll writes a member of at most
#: ``append.MEMBER_BYTES`` (one record may pass that alone); a larger one is not ours (a bomb
#: of newlines, say) and is refused before it takes the memory.
MAX_MEMBER_BYTES: Final = 2 * MAX_RECORD_BYTES
_STEP: Final = 1 << 20  # text inflated per zlib call, so no call can take more


def is_gzip(path: str) -> bool:
    """Whether *path* names a gzip-compressed output (by its ``.gz`` suffix)."""
    return path.endswith(".gz")


@dataclass(slots=True)
class Tail:
    """What follows the last whole line of a file, which a repair cuts if it is ``ours``."""

    torn: int = 0  # bytes of the file after the last whole line or gzip member
    ours: bool = True  # whether those bytes can be the start of a batchpoll write
    unterminated: int = 0  # .gz: text after the last line, inside the last whole member


def read_lines(path: str, tail: Tail | None = None) -> Iterator[bytes]:
    """Every whole line of an OUTPUT file (plain or ``.gz``; ``-`` is standard input),
    streamed, each with its LF.

    What follows the last whole line (a half-written line or gzip member) is not yielded but
    described in *tail*, judged by ``recordline.could_be_torn``. Raises ``InputFileError`` for
    a file that cannot be read, a ``.gz`` that is not gzip or is damaged before its end, or a
    line over ``MAX_RECORD_BYTES``.
    """
    tail = tail if tail is not None else Tail()
    parts: list[bytes] = []
    size = 0
    try:
        with (
            open(path, "rb")
            if path != STDIO
            else open(sys.stdin.fileno(), "rb", closefd=False) as f
        ):
            chunks = _gunzip(f, path, tail) if is_gzip(path) else iter(lambda: f.read(_CHUNK), b"")
            for chunk in chunks:
                *whole, rest = chunk.split(b"\n")
                for piece in whole:
                    if parts:
                        parts.append(piece)
                        piece, size = b"".join(parts), 0
                        parts.clear()
                    yield piece + b"\n"
                if rest:
                    parts.append(rest)
                    size += len(rest)
                    if size > MAX_RECORD_BYTES:
                        raise InputFileError(
                            f"output {path} holds a line longer than {MAX_RECORD_BYTES} "
                            "bytes, which no batchpoll record is"
                        )
    except OSError as exc:
        raise InputFileError(f"cannot read output {path}: {exc.strerror or exc}") from None
    partial = b"".join(parts)
    if is_gzip(path):
        # batchpoll ends every member with a whole line; text after the last one inside a whole
        # member (a torn plain file gzipped) can only be cut by rewriting, if it is ours.
        tail.unterminated = len(partial)
        tail.ours = tail.ours and could_be_torn(partial)
    else:
        tail.torn = len(partial)
        tail.ours = could_be_torn(partial)


def _gunzip(f: BinaryIO, path: str, tail: Tail) -> Iterator[bytes]:
    """The text of each whole gzip member in *f*; a torn last member is described in *tail*.

    A member is held until it ends, so a torn one's lines are never taken for written ones;
    a member larger than ``MAX_MEMBER_BYTES`` is refused, and so is one zlib finds damaged
    (bad data or checksum), the last one too: only a member cut short is what a kill leaves.
    """
    member, pending, used, size = zlib.decompressobj(wbits=31), list[bytes](), 0, 0
    offset = 0  # where the member being read starts
    raw = b""
    while True:
        raw = raw or f.read(_CHUNK)
        if not raw:
            break
        try:
            text = member.decompress(raw, _STEP)
        except zlib.error:
            raise InputFileError(
                f"output {path} is not gzip, or is damaged at byte {offset}"
            ) from None
        size += len(text)
        if size > MAX_MEMBER_BYTES:
            raise InputFileError(
                f"output {path} has a gzip member of more than {MAX_MEMBER_BYTES} bytes at "
                f"byte {offset}, which batchpoll never writes"
            )
        pending.append(text)
        left = member.unused_data if member.eof else member.unconsumed_tail
        used += len(raw) - len(left)
        raw = left
        if member.eof:
            yield b"".join(pending)
            offset += used
            member, pending, used, size = zlib.decompressobj(wbits=31), list[bytes](), 0, 0
    tail.torn = used
    # What the torn member holds so far must be what batchpoll would have written.
    tail.ours = could_be_torn(b"".join(pending))


@dataclass(slots=True)
class Reading:
    """What ``read_records`` passed over, for a report to say."""

    duplicates: int = 0  # records of a key already read: the first one counts
    not_records: int = 0  # whole lines that are not records
    torn: int = 0  # bytes after the last whole line (or gzip member)


def read_records(path: str, reading: Reading | None = None) -> Iterator[dict[str, Any]]:
    """Each record of OUTPUT *path* (``-``: standard input) once, in file order.

    Of two records for one key the first is kept, as ``--resume`` keeps it; later ones, lines
    that are not records and a torn tail are passed over and counted in *reading*. Raises
    ``InputFileError`` as ``read_lines`` does.
    """
    reading = reading if reading is not None else Reading()
    tail = Tail()

    def records() -> Iterator[dict[str, Any]]:
        for line in read_lines(path, tail):
            if (obj := parse_record(line)) is None:
                reading.not_records += 1
            else:
                yield obj

    yield from first_per_key(records(), reading)
    reading.torn = tail.torn


def first_per_key(records: Iterable[_R], reading: Reading | None = None) -> Iterator[_R]:
    """*records* with every later one of a key (``records.record_key``) left out, counted in
    *reading*; items without a string ``progress_id`` and ``status`` pass as they are."""
    seen: set[str] = set()
    for record in records:
        if (fields := record_fields(record)) is not None:
            key = record_key(*fields, record.get("input_sha256"))
            if key in seen:
                if reading is not None:
                    reading.duplicates += 1
                continue
            seen.add(key)
        yield record
