"""Where records go: whole JSON lines, appended, and the repair of a file a run left behind.

Each batch of records goes out as one ``os.write`` loop on a descriptor opened with
``O_APPEND``: no Python-side buffer can hold half a line when the process dies, so a file holds
whole lines plus, after a SIGKILL mid-write, at most one torn last line that ``prepare_output``
cuts before a resumed run appends.
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
from .records import Record

STDOUT = "-"
_CHUNK: Final = 64 * 1024
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
    """

    __slots__ = ("_fd", "_fsync", "_gzip", "_owned", "_waits", "path")

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        """*fsync*: make each batch durable before returning (slower; survives power loss)."""
        self.path = path
        self._fsync = fsync
        self._gzip = is_gzip(path)
        if path == STDOUT:
            sys.stdout.flush()
            self._fd, self._owned = sys.stdout.fileno(), False
        else:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise InputFileError(f"cannot open output {path}: {exc.strerror}") from None
            self._owned = True
        self._waits = fdio.waits(self._fd)

    async def write(self, records: Sequence[Record]) -> None:
        lines = b"".join([r.to_json_line() for r in records])
        data = gzip.compress(lines, mtime=0) if self._gzip else lines
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
            if self._fsync and self._owned:
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
    """Also appends each record to ``DIR/<status>.jsonl`` (``--split-by-status DIR``)."""

    __slots__ = ("_files", "directory")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"cannot create {directory}: {exc.strerror}") from None
        self._files: dict[str, LineSink] = {}

    def reset(self, records: Iterable[bytes] = ()) -> None:
        """Start the files again from *records* (JSON lines): what a resumed OUTPUT holds."""
        by_status: dict[str, list[bytes]] = {}
        for line in records:
            _, status = _read_record(line)
            if status is not None:
                by_status.setdefault(status, []).append(line)
        for name in os.listdir(self.directory):
            if name.endswith(".jsonl"):
                _replace(os.path.join(self.directory, name), [])
        for status, lines in by_status.items():
            _replace(self._path(status), lines)

    async def write(self, records: Sequence[Record]) -> None:
        by_status: dict[str, list[Record]] = {}
        for record in records:
            by_status.setdefault(record.status, []).append(record)
        for status, batch in by_status.items():
            if (sink := self._files.get(status)) is None:
                sink = self._files[status] = LineSink(self._path(status))
            await sink.write(batch)

    def _path(self, status: str) -> str:
        # Statuses come from a fixed set of snake_case words, so they are safe file names.
        return os.path.join(self.directory, f"{status}.jsonl")

    def close(self) -> None:
        for sink in self._files.values():
            sink.close()


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
    """What an earlier run's output already settles."""

    done: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    torn_bytes: int = 0
    replaced: int = 0
    lines: list[bytes] = field(default_factory=list)  # the records kept, as JSON lines


def prepare_output(
    path: str, *, resume: bool, overwrite: bool, retry_statuses: Collection[str]
) -> Prior:
    """Make OUTPUT ready for appending; return the ids it already holds a record for.

    Without ``resume`` a non-empty file is refused (or emptied with ``overwrite``). With it,
    a torn last line is cut, and records whose status is in *retry_statuses* are dropped so
    those ids are polled again and written once more. Streams: memory holds the ids, not the
    file.
    """
    if path == STDOUT:
        return Prior()
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return Prior()
    except OSError as exc:
        raise InputFileError(f"cannot read output {path}: {exc.strerror}") from None
    if not size:
        return Prior()
    if not resume:
        if overwrite:
            _replace(path, [])
            return Prior()
        raise InputFileError(
            f"output {path} already holds records: pass --resume to keep them and poll the "
            "rest, or --overwrite to start again"
        )
    prior = Prior()
    changed = False

    def kept() -> Iterator[bytes]:
        nonlocal changed
        for line in read_lines(path, prior):
            pid, status = _read_record(line)
            if pid is None or status is None or status in retry_statuses or pid in prior.done:
                # Not a record of ours, one to poll again, or a second one for the id.
                changed = True
                prior.replaced += pid is not None and status is not None
                continue
            prior.done.add(pid)
            prior.statuses[status] = prior.statuses.get(status, 0) + 1
            yield line

    _replace(path, kept(), only_if=lambda: changed or prior.torn_bytes > 0)
    return prior


def read_lines(path: str, prior: Prior | None = None) -> Iterator[bytes]:
    """Every whole line of an OUTPUT file (plain or ``.gz``), streamed; torn bytes at the end
    (a half-written line or gzip member) are skipped and counted in ``prior.torn_bytes``."""
    partial = b""
    try:
        with open(path, "rb") as f:
            chunks = _gunzip(f, prior) if is_gzip(path) else iter(lambda: f.read(_CHUNK), b"")
            for chunk in chunks:
                *whole, partial = (partial + chunk).split(b"\n")
                for line in whole:
                    yield line + b"\n"
    except OSError as exc:
        raise InputFileError(f"cannot read output {path}: {exc.strerror}") from None
    if prior is not None:
        prior.torn_bytes += len(partial)


def _gunzip(f: BinaryIO, prior: Prior | None) -> Iterator[bytes]:
    """The text of each whole gzip member in *f*; a torn last member is counted, not read."""
    member, pending, used = zlib.decompressobj(wbits=31), b"", 0
    raw = b""
    while True:
        raw = raw or f.read(_CHUNK)
        if not raw:
            break
        try:
            pending += member.decompress(raw)
        except zlib.error:
            break
        used += len(raw) - len(member.unused_data)
        raw = member.unused_data
        if member.eof:
            yield pending
            member, pending, used = zlib.decompressobj(wbits=31), b"", 0
    if prior is not None:
        prior.torn_bytes += used + len(raw)


def _read_record(line: bytes) -> tuple[str | None, str | None]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    pid, status = obj.get("progress_id"), obj.get("status")
    if isinstance(pid, str) and isinstance(status, str):
        return pid, status
    return None, None


def _replace(path: str, lines: Iterable[bytes], only_if: Callable[[], bool] = lambda: True) -> None:
    """Write *lines* to a sibling file and, if ``only_if()`` then holds, rename it over *path*:
    a crash leaves one file or the other, never half of one."""
    tmp = f"{path}.batchpoll-tmp"
    try:
        with open(tmp, "wb") as raw:
            # A gzip file is only started for a first line, so "no records" is an empty file.
            packed: gzip.GzipFile | None = None
            for line in lines:
                if packed is None and is_gzip(path):
                    packed = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
                (packed or raw).write(line)
            if packed is not None:
                packed.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if only_if():
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    except OSError as exc:
        raise InputFileError(f"cannot rewrite output {path}: {exc.strerror}") from None
