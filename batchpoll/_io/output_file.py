"""An OUTPUT file read back: its lines, the proof that batchpoll wrote it, and its repair.

One reader for everything that reads OUTPUT (``--resume``, ``--split-by-status`` rebuilt from it,
JUnit, ``batchpoll report``), so they all see the same records: plain or gzip, a torn tail set
apart, and one record per key, the first (``read_records``). A file is only ever cut or
rewritten once ``scan_output`` has proved every line of it a batchpoll record (a torn last line
must look like the start of one): anything else is refused, and the file is left as it was.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, TypeVar

import orjson

from ..errors import InputFileError
from ..records import ALL_STATUSES, record_key
from .outfiles import STDIO, OutputLock, remove_stale_temporaries, replace_file

_CHUNK: Final = 64 * 1024
_R = TypeVar("_R", bound=Mapping[str, Any])
#: How every record line batchpoll writes begins (orjson keeps the keys' order).
RECORD_START: Final = b'{"progress_id":'
#: Lines per gzip member when a ``.gz`` OUTPUT is rewritten, so reading it back stays bounded.
MEMBER_LINES: Final = 1024
#: Text per gzip member that a batch of records is cut into (at a line's end).
MEMBER_BYTES: Final = 8 * 1024 * 1024


def is_gzip(path: str) -> bool:
    """Whether *path* names a gzip-compressed output (by its ``.gz`` suffix)."""
    return path.endswith(".gz")


@dataclass(slots=True)
class Prior:
    """What an earlier run's output already settles: the keys (``records.record_key``) and
    statuses of the records kept, the torn bytes cut and the records dropped."""

    done: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    torn_bytes: int = 0
    replaced: int = 0


def prepare_output(
    path: str,
    lock: OutputLock,
    *,
    resume: bool,
    overwrite: bool,
    retry_statuses: Collection[str],
) -> Prior:
    """Make OUTPUT (locked by *lock*) ready for appending; return what it already settles.

    Without ``resume`` a non-empty file is refused, or with ``overwrite`` emptied in place. With
    it, a torn last line is cut (in place), and records whose status is in *retry_statuses*
    (and second records of one id) are dropped, rewriting the file whole, so those ids are
    polled again and written once more. Either way the file must first be proved batchpoll's
    (``scan_output``), or it is refused untouched. Streams: memory holds keys, not the file.
    """
    remove_stale_temporaries(path)  # a rewrite killed with SIGKILL left it; we hold the lock
    try:
        size = os.fstat(lock.fd).st_size
    except OSError as exc:
        raise InputFileError(f"cannot read output {path}: {exc.strerror}") from None
    if not size:
        return Prior()
    if not resume and not overwrite:
        raise InputFileError(
            f"output {path} is not empty: pass --resume to keep its records and poll the "
            "rest, or --overwrite to start again"
        )
    scan = scan_output(path, retry_statuses=retry_statuses if resume else ())
    try:
        if not resume:
            os.ftruncate(lock.fd, 0)
            return Prior()
        if scan.dropped or scan.rewrite:
            replace_file(path, encoded(path, _kept(path, retry_statuses)), keep_open=lock.adopt)
        elif scan.torn:
            os.ftruncate(lock.fd, size - scan.torn)
    except OSError as exc:
        raise InputFileError(f"cannot rewrite output {path}: {exc.strerror or exc}") from None
    return Prior(
        done=scan.done, statuses=scan.statuses, torn_bytes=scan.torn, replaced=scan.dropped
    )


@dataclass(slots=True)
class Scan:
    """What ``scan_output`` found: every line a record, and what a resume would keep."""

    records: int = 0
    done: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # records a resume would drop: a retry status, or an id's second record
    torn: int = 0  # bytes at the end that hold no whole line (or gzip member)
    rewrite: bool = False  # the torn part is inside a whole gzip member: cut by rewriting


def scan_output(
    path: str,
    *,
    part: str = "output",
    retry_statuses: Collection[str] = (),
    only_status: str | None = None,
) -> Scan:
    """Prove *path* batchpoll's, reading it once: every line a record (of *only_status*, if
    given), and anything after the last whole line the start of one.

    Raises ``InputFileError`` naming the first line that is not, so nothing is changed in a file
    batchpoll did not write (an ids file given as OUTPUT, say).
    """
    tail = Tail()
    scan = Scan()
    for number, line in enumerate(read_lines(path, tail), 1):
        found = record_of(line)
        if found is None or (only_status is not None and found[1] != only_status):
            what = "a batchpoll record" + (f" of status {only_status}" if only_status else "")
            raise InputFileError(
                f"{part} {path}: line {number} is not {what}; batchpoll changes only files "
                "it wrote, so it leaves this one as it is (give another path, or fix the line)"
            )
        key, status = found
        scan.records += 1
        if status in retry_statuses or key in scan.done:
            scan.dropped += 1
            continue
        scan.done.add(key)
        scan.statuses[status] = scan.statuses.get(status, 0) + 1
    if (tail.torn or tail.unterminated) and not tail.ours:
        raise InputFileError(
            f"{part} {path}: its last {tail.torn} bytes are not the start of a batchpoll "
            "record; batchpoll changes only files it wrote, so it leaves this one as it is"
        )
    scan.torn = tail.torn + tail.unterminated
    scan.rewrite = bool(tail.unterminated)
    return scan


def parse_record(line: bytes) -> dict[str, Any] | None:
    """A record line's object, or None when the line is not a batchpoll record (a JSON
    object with a string ``progress_id`` and one of batchpoll's statuses)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    pid, status = obj.get("progress_id"), obj.get("status")
    if not isinstance(pid, str) or not isinstance(status, str) or status not in ALL_STATUSES:
        return None
    return obj


def record_of(line: bytes) -> tuple[str, str] | None:
    """The key (``records.record_key``) and status of a record line, or None."""
    obj = parse_record(line)
    if obj is None:
        return None
    return record_key(obj["progress_id"], obj["status"], obj.get("input_sha256")), obj["status"]


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
        pid, status = record.get("progress_id"), record.get("status")
        if isinstance(pid, str) and isinstance(status, str):
            key = record_key(pid, status, record.get("input_sha256"))
            if key in seen:
                if reading is not None:
                    reading.duplicates += 1
                continue
            seen.add(key)
        yield record


def _kept(path: str, retry_statuses: Collection[str]) -> Iterator[bytes]:
    """The lines a resume keeps: ``scan_output``'s rule, applied again while rewriting."""
    seen: set[str] = set()
    for line in read_lines(path, Tail()):
        found = record_of(line)
        if found is None or found[1] in retry_statuses or found[0] in seen:
            continue
        seen.add(found[0])
        yield line


def encoded(path: str, lines: Iterable[bytes]) -> Iterator[bytes]:
    """*lines* as the file's bytes: plain, or for ``.gz`` gzip members of at most
    ``MEMBER_LINES`` lines each, so a reader never needs one huge member in memory."""
    if not is_gzip(path):
        yield from lines
        return
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if len(batch) >= MEMBER_LINES or size >= MEMBER_BYTES:
            yield gzip.compress(b"".join(batch), mtime=0)
            batch.clear()
            size = 0
    if batch:
        yield gzip.compress(b"".join(batch), mtime=0)


#: The longest line a reader takes for a record; longer is not batchpoll's (bodies are capped).
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024


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
    described in *tail*. Raises ``InputFileError`` for a file that cannot be read, a ``.gz``
    that is not gzip or is damaged before its end, or a line over ``MAX_RECORD_BYTES``.
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


def could_be_torn(text: bytes) -> bool:
    """Whether *text*, found after the last whole line (or whole gzip member), can be what a
    killed batchpoll left: whole record lines, then the start of one.

    A complete JSON value that is not a record (``{"progress_id":"x"}`` and no newline) is
    not the start of anything batchpoll writes, so it is never cut.
    """
    *whole, partial = text.split(b"\n")
    if any(parse_record(line) is None for line in whole):
        return False
    try:
        orjson.loads(partial)
    except orjson.JSONDecodeError:
        return partial.startswith(RECORD_START) or RECORD_START.startswith(partial)
    return parse_record(partial) is not None


#: The most text one gzip member may hold. batchpoll writes a member of at most
#: ``MEMBER_BYTES`` (one record may pass that alone); a larger one is not ours (a bomb of
#: newlines, say) and is refused before it takes the memory.
MAX_MEMBER_BYTES: Final = 2 * MAX_RECORD_BYTES
_STEP: Final = 1 << 20  # text inflated per zlib call, so no call can take more


def _gunzip(f: BinaryIO, path: str, tail: Tail) -> Iterator[bytes]:
    """The text of each whole gzip member in *f*; a torn last member is described in *tail*.

    A member is held until it ends, so a torn one's lines are never taken for written ones;
    a member larger than ``MAX_MEMBER_BYTES`` is refused.
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
