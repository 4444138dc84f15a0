"""Where records go: whole JSON lines, appended, and the repair of a file a run left behind.

Each batch of records goes out as one ``os.write`` loop on a descriptor opened with
``O_APPEND``: no Python-side buffer can hold half a line when the process dies, so a file holds
whole lines plus, after a SIGKILL mid-write, at most one torn last line that ``prepare_output``
cuts before a resumed run appends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream

from .errors import InputFileError
from .records import Record

STDOUT = "-"
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
    """

    __slots__ = ("_fd", "_fsync", "_owned", "path")

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        """*fsync*: make each batch durable before returning (slower; survives power loss)."""
        self.path = path
        self._fsync = fsync
        if path == STDOUT:
            sys.stdout.flush()
            self._fd, self._owned = sys.stdout.fileno(), False
        else:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise InputFileError(f"cannot open output {path}: {exc.strerror}") from None
            self._owned = True

    async def write(self, records: Sequence[Record]) -> None:
        # A blocking write: to a file it is fast, and a slow pipe should hold the run back.
        data = memoryview(b"".join([r.to_json_line() for r in records]))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            if self._fsync and self._owned:
                os.fsync(self._fd)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise InputFileError(f"cannot write output {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


@dataclass(slots=True)
class Prior:
    """What an earlier run's output already settles."""

    done: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    torn_bytes: int = 0
    replaced: int = 0


def prepare_output(
    path: str, *, resume: bool, overwrite: bool, retry_statuses: Collection[str]
) -> Prior:
    """Make OUTPUT ready for appending; return the ids it already holds a record for.

    Without ``resume`` a non-empty file is refused (or emptied with ``overwrite``). With it,
    a torn last line is cut, and records whose status is in *retry_statuses* are dropped so
    those ids are polled again and written once more.
    """
    if path == STDOUT:
        return Prior()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Prior()
    except OSError as exc:
        raise InputFileError(f"cannot read output {path}: {exc.strerror}") from None
    if not data:
        return Prior()
    if not resume:
        if overwrite:
            _replace(path, b"")
            return Prior()
        raise InputFileError(
            f"output {path} already holds records: pass --resume to keep them and poll the "
            "rest, or --overwrite to start again"
        )
    prior = Prior()
    whole_end = data.rfind(b"\n") + 1
    prior.torn_bytes = len(data) - whole_end
    kept: list[bytes] = []
    for line in data[:whole_end].splitlines(keepends=True):
        pid, status = _read_record(line)
        if pid is None or status is None:
            continue  # not a record of ours; dropping it keeps the file one record per id
        if status in retry_statuses or pid in prior.done:
            prior.replaced += 1
            continue
        prior.done.add(pid)
        prior.statuses[status] = prior.statuses.get(status, 0) + 1
        kept.append(line)
    if prior.torn_bytes or prior.replaced or len(kept) != data.count(b"\n"):
        _replace(path, b"".join(kept))
    return prior


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


def _replace(path: str, data: bytes) -> None:
    """Write *data* to a sibling file and rename it over *path*, so a crash keeps one or other."""
    tmp = f"{path}.batchpoll-tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputFileError(f"cannot rewrite output {path}: {exc.strerror}") from None
