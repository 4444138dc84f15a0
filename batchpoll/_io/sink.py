"""Where records go: whole JSON lines, appended to OUTPUT and to the split files.

Each batch of records goes out as one ``os.write`` loop on a descriptor opened with
``O_APPEND``: no Python-side buffer can hold half a line when the process dies, so a file holds
whole lines plus, after a SIGKILL mid-write, at most one torn last line that
``output_file.prepare_output`` cuts before a resumed run appends.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.redact import json_needle, masked_record
from ..errors import InputFileError
from ..records import ALL_STATUSES, Record
from . import fdio
from .outfiles import OutputLock, replace_file
from .output_file import MEMBER_BYTES, encoded, is_gzip, record_of, scan_output

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
        if not self._gzip:
            return lines
        if len(lines) <= MEMBER_BYTES:
            return gzip.compress(lines, mtime=0)
        # A big batch in several members, so that a reader never holds more than one of them.
        return b"".join(encoded(self.path, lines.splitlines(keepends=True)))

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

    Only ``<status>.jsonl`` files for statuses batchpoll writes are ever touched
    (``check_split_files`` proves them batchpoll's first). For the whole run the directory is
    locked, so no other run takes a file in it as OUTPUT, and so is every status file, so no
    run that had one as OUTPUT before this one started is written over.
    """

    __slots__ = ("_files", "_lock", "_locks", "_secret", "directory")

    def __init__(self, directory: str, *, secret: str | None = None) -> None:
        """Create *directory* if need be and lock it and the status files it holds."""
        self.directory = directory
        self._secret = secret
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"cannot create {directory}: {exc.strerror}") from None
        self._lock = OutputLock(directory, "--split-by-status directory", directory=True)
        self._locks: dict[str, OutputLock] = {}
        self._files: dict[str, LineSink] = {}
        try:
            for status in sorted(ALL_STATUSES):
                if os.path.lexists(self._path(status)):
                    self._locked(status)
        except BaseException:
            self.close()
            raise

    def reset(self, records: Iterable[bytes] = ()) -> None:
        """Start the status files again from *records* (JSON lines): what a resumed OUTPUT
        holds. Each existing status file is replaced whole (``outfiles.replace_file``)."""
        by_status: dict[str, list[bytes]] = {}
        for line in records:
            found = record_of(line)
            if found is not None:
                by_status.setdefault(found[1], []).append(line)
        for status in sorted(ALL_STATUSES):
            lines = by_status.get(status, [])
            if not lines and status not in self._locks:
                continue
            path = self._path(status)
            lock = self._locked(status)
            try:
                replace_file(path, encoded(path, lines), keep_open=lock.adopt)
            except OSError as exc:
                raise InputFileError(f"cannot rewrite {path}: {exc.strerror or exc}") from None

    async def write(self, records: Sequence[Record]) -> None:
        by_status: dict[str, list[Record]] = {}
        for record in records:
            by_status.setdefault(record.status, []).append(record)
        for status, batch in by_status.items():
            if (sink := self._files.get(status)) is None:
                fd = self._locked(status).fd
                sink = self._files[status] = LineSink(
                    self._path(status), secret=self._secret, fd=fd
                )
            await sink.write(batch)

    def _locked(self, status: str) -> OutputLock:
        """The lock on *status*'s file, taken (and the file created) on first need."""
        if (lock := self._locks.get(status)) is None:
            path = self._path(status)
            lock = self._locks[status] = OutputLock(
                path, "--split-by-status file", in_locked_directory=True
            )
        return lock

    def _path(self, status: str) -> str:
        # Statuses come from a fixed set of snake_case words, so they are safe file names.
        return split_path(self.directory, status)

    def close(self) -> None:
        for sink in self._files.values():
            sink.close()
        for lock in self._locks.values():
            lock.close()
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
