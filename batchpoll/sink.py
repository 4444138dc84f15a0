"""Where records go: whole JSON lines, appended, and the repair of a file a run left behind.

Each batch of records goes out as one ``os.write`` loop on a descriptor opened with
``O_APPEND``: no Python-side buffer can hold half a line when the process dies, so a file holds
whole lines plus, after a SIGKILL mid-write, at most one torn last line that ``prepare_output``
cuts before a resumed run appends.

A file is only ever cut or rewritten once ``scan_output`` has proved every line of it a
batchpoll record (a torn last line must look like the start of one): anything else is refused,
and the file is left as it was.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final, Protocol

import anyio
import anyio.to_thread
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream

from . import fdio
from .errors import InputFileError
from .outfiles import OutputLock, replace_file
from .records import ALL_STATUSES, Record, record_key
from .redact import json_needle, masked_record

STDOUT = "-"
_CHUNK: Final = 64 * 1024
#: How every record line batchpoll writes begins (orjson keeps the keys' order).
RECORD_START: Final = b'{"progress_id":'
_GZIP_MAGIC: Final = b"\x1f\x8b"
#: Lines per gzip member when a ``.gz`` OUTPUT is rewritten, so reading it back stays bounded.
_MEMBER_LINES: Final = 1024
#: Most records written in one batch (one syscall), and the record stream's buffer.
SINK_BUFFER: Final = 1024


class RecordSink(Protocol):
    """Where finished records go; ``write`` gets whole batches so a file sees few syscalls.

    It may wait (a consumer that is behind): the engine then holds finished records back.
    """

    async def write(self, records: Sequence[Record]) -> None: ...


async def write_records(
    rec_rx: MemoryObjectReceiveStream[Record],
    sink: RecordSink,
    written: Callable[[Sequence[Record]], None],
) -> None:
    """The sink stage: write whatever records are waiting as one batch, until the stream ends."""
    async with rec_rx:
        async for record in rec_rx:
            batch = [record]
            while len(batch) < SINK_BUFFER:
                try:
                    batch.append(rec_rx.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await sink.write(batch)
            written(batch)


def is_gzip(path: str) -> bool:
    """Whether *path* names a gzip-compressed output (by its ``.gz`` suffix)."""
    return path.endswith(".gz")


class LineSink:
    """Appends records as JSON lines to a path, or to standard output for ``-``.

    Nothing is buffered in Python: each batch is in the kernel when ``write`` returns, so there
    is nothing to flush on a timer or at exit; ``fsync`` adds durability against power loss.
    A ``.gz`` path gets each batch as a gzip member of its own: multi-member gzip is one valid
    file to ``gzip -d``/``zcat``, and a kill can tear only the member being written.
    With a *secret*, no line written holds it (``redact``): a batch that might is written
    from masked copies of its records.
    """

    __slots__ = ("_fd", "_fsync", "_gzip", "_needle", "_owned", "_secret", "_waits", "path")

    def __init__(
        self,
        path: str,
        *,
        fsync: bool = False,
        secret: str | None = None,
        fd: int | None = None,
    ) -> None:
        """*fsync*: make each batch durable before returning (slower; survives power loss).

        *fd*: a descriptor already open on *path* for appending (an ``OutputLock``'s), which
        the sink writes to but does not close.
        """
        self.path = path
        self._fsync = fsync
        self._gzip = is_gzip(path)
        self._secret = secret or None
        self._needle = json_needle(secret) if secret else None
        if fd is not None:
            self._fd, self._owned = fd, False
        elif path == STDOUT:
            sys.stdout.flush()
            self._fd, self._owned = sys.stdout.fileno(), False
        else:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise InputFileError(f"cannot open output {path}: {exc.strerror}") from None
            self._owned = True
        self._waits = fdio.waits(self._fd)

    def encode(self, records: Sequence[Record]) -> bytes:
        """The batch as the bytes to write: JSON lines, the secret masked, gzip for ``.gz``."""
        lines = b"".join([r.to_json_line() for r in records])
        if self._needle is not None and self._needle in lines:
            secret = self._secret
            assert secret is not None
            lines = b"".join([masked_record(r, secret).to_json_line() for r in records])
        return gzip.compress(lines, mtime=0) if self._gzip else lines

    async def write(self, records: Sequence[Record]) -> None:
        data = self.encode(records)
        try:
            if self._waits:
                # A pipe or terminal: a slow reader holds the run back, but on the loop, so
                # a signal still ends the wait. Nothing to fsync there.
                await fdio.write_all(self._fd, data)
                return
            # A file: a blocking write is fast, and inline is the cheapest path there is.
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(self._fd, rest) :]
            if self._fsync and (self._owned or self.path != STDOUT):
                # Milliseconds or more on a busy disk: off the loop, which polls meanwhile.
                await anyio.to_thread.run_sync(os.fsync, self._fd)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise InputFileError(f"cannot write output {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


class SplitSink:
    """Also appends each record to ``DIR/<status>.jsonl`` (``--split-by-status DIR``).

    The directory is locked for the run, and only ``<status>.jsonl`` files for statuses
    batchpoll writes are ever touched; ``check_split_files`` proves them batchpoll's first.
    """

    __slots__ = ("_files", "_lock", "_secret", "directory")

    def __init__(self, directory: str, *, secret: str | None = None) -> None:
        self.directory = directory
        self._secret = secret
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"cannot create {directory}: {exc.strerror}") from None
        self._lock = OutputLock(directory, "--split-by-status directory", directory=True)
        self._files: dict[str, LineSink] = {}

    def reset(self, records: Iterable[bytes] = ()) -> None:
        """Start the status files again from *records* (JSON lines): what a resumed OUTPUT
        holds. Each existing status file is replaced whole (``outfiles.replace_file``)."""
        by_status: dict[str, list[bytes]] = {}
        for line in records:
            found = record_of(line)
            if found is not None:
                by_status.setdefault(found[1], []).append(line)
        for status in sorted(ALL_STATUSES):
            path = self._path(status)
            lines = by_status.get(status, [])
            if not lines and not os.path.lexists(path):
                continue
            try:
                replace_file(path, _encoded(path, lines))
            except OSError as exc:
                raise InputFileError(f"cannot rewrite {path}: {exc.strerror or exc}") from None

    async def write(self, records: Sequence[Record]) -> None:
        by_status: dict[str, list[Record]] = {}
        for record in records:
            by_status.setdefault(record.status, []).append(record)
        for status, batch in by_status.items():
            if (sink := self._files.get(status)) is None:
                sink = self._files[status] = LineSink(self._path(status), secret=self._secret)
            await sink.write(batch)

    def _path(self, status: str) -> str:
        # Statuses come from a fixed set of snake_case words, so they are safe file names.
        return split_path(self.directory, status)

    def close(self) -> None:
        for sink in self._files.values():
            sink.close()
        self._lock.close()


def split_path(directory: str, status: str) -> str:
    """The file ``--split-by-status`` writes the records of *status* to."""
    return os.path.join(directory, f"{status}.jsonl")


def split_names() -> tuple[str, ...]:
    """Every file name ``--split-by-status`` may write, in a stable order."""
    return tuple(f"{status}.jsonl" for status in sorted(ALL_STATUSES))


def check_split_files(directory: str, *, keep: bool) -> None:
    """Refuse (``InputFileError``) a status file in *directory* that batchpoll did not write:
    a line that is not a record of that status. Without *keep* (a fresh run, not
    ``--resume`` or ``--overwrite``), a status file holding any record is refused too."""
    for status in sorted(ALL_STATUSES):
        path = split_path(directory, status)
        if not os.path.lexists(path):
            continue
        if not os.path.isfile(path):
            raise InputFileError(f"--split-by-status file {path} is not a regular file")
        scan = scan_output(path, part="--split-by-status file", only_status=status)
        if scan.records and not keep:
            raise InputFileError(
                f"--split-by-status file {path} already holds records: pass --resume to "
                "rebuild it from OUTPUT, or --overwrite to start again"
            )


class TeeSink:
    """Writes every batch to each of several sinks, in order."""

    __slots__ = ("_sinks",)

    def __init__(self, *sinks: RecordSink) -> None:
        self._sinks = sinks

    async def write(self, records: Sequence[Record]) -> None:
        for sink in self._sinks:
            await sink.write(records)


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
        if scan.dropped:
            replace_file(path, _encoded(path, _kept(path, retry_statuses)), keep_open=lock.adopt)
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
    if tail.torn and not tail.ours:
        raise InputFileError(
            f"{part} {path}: its last {tail.torn} bytes are not the start of a batchpoll "
            "record; batchpoll changes only files it wrote, so it leaves this one as it is"
        )
    scan.torn = tail.torn
    return scan


def record_of(line: bytes) -> tuple[str, str] | None:
    """The key and status of a record line, or None when the line is not a batchpoll record
    (a JSON object with a string ``progress_id`` and one of batchpoll's statuses)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    pid, status = obj.get("progress_id"), obj.get("status")
    if not isinstance(pid, str) or not isinstance(status, str) or status not in ALL_STATUSES:
        return None
    return record_key(pid, status, obj.get("input_sha256")), status


def _kept(path: str, retry_statuses: Collection[str]) -> Iterator[bytes]:
    """The lines a resume keeps: ``scan_output``'s rule, applied again while rewriting."""
    seen: set[str] = set()
    for line in read_lines(path, Tail()):
        found = record_of(line)
        if found is None or found[1] in retry_statuses or found[0] in seen:
            continue
        seen.add(found[0])
        yield line


def _encoded(path: str, lines: Iterable[bytes]) -> Iterator[bytes]:
    """*lines* as the file's bytes: plain, or for ``.gz`` gzip members of at most
    ``_MEMBER_LINES`` lines each, so a reader never needs one huge member in memory."""
    if not is_gzip(path):
        yield from lines
        return
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= _MEMBER_LINES:
            yield gzip.compress(b"".join(batch), mtime=0)
            batch.clear()
    if batch:
        yield gzip.compress(b"".join(batch), mtime=0)


#: The longest line a reader takes for a record; longer is not batchpoll's (bodies are capped).
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024


@dataclass(slots=True)
class Tail:
    """What follows the last whole line of a file, which a repair cuts if it is ``ours``."""

    torn: int = 0  # bytes of the file after the last whole line or gzip member
    ours: bool = True  # whether those bytes can be the start of a batchpoll write


def read_lines(path: str, tail: Tail | None = None) -> Iterator[bytes]:
    """Every whole line of an OUTPUT file (plain or ``.gz``), streamed, each with its LF.

    What follows the last whole line (a half-written line or gzip member) is not yielded but
    described in *tail*. Raises ``InputFileError`` for a file that cannot be read, a ``.gz``
    that is not gzip or is damaged before its end, or a line over ``MAX_RECORD_BYTES``.
    """
    tail = tail if tail is not None else Tail()
    parts: list[bytes] = []
    size = 0
    try:
        with open(path, "rb") as f:
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
        # Each member holds whole lines, so text left over from whole members is not ours.
        tail.ours = tail.ours and not partial
    else:
        tail.torn = len(partial)
        tail.ours = partial.startswith(RECORD_START) or RECORD_START.startswith(partial)


def _gunzip(f: BinaryIO, path: str, tail: Tail) -> Iterator[bytes]:
    """The text of each whole gzip member in *f*; a torn last member is described in *tail*.

    A member is held until it ends, so a torn one's lines are never taken for written ones.
    """
    member, pending, used = zlib.decompressobj(wbits=31), [], 0
    offset = 0  # where the member being read starts
    raw = b""
    while True:
        raw = raw or f.read(_CHUNK)
        if not raw:
            break
        try:
            pending.append(member.decompress(raw))
        except zlib.error:
            raise InputFileError(
                f"output {path} is not gzip, or is damaged at byte {offset}: batchpoll "
                "changes only files it wrote, so it leaves this one as it is"
            ) from None
        used += len(raw) - len(member.unused_data)
        raw = member.unused_data
        if member.eof:
            yield b"".join(pending)
            offset += used
            member, pending, used = zlib.decompressobj(wbits=31), [], 0
    tail.torn = used
    tail.ours = True
