"""Appending records to OUTPUT (or a split file): whole JSON lines, plain or gzip members.

Each batch of records goes out as one ``os.write`` loop on a descriptor opened with
``O_APPEND``: no Python-side buffer can hold half a line when the process dies, so a file holds
whole lines plus, after a SIGKILL mid-write, at most one torn last line that
``repair.prepare_output`` cuts before a resumed run appends.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import anyio
import anyio.to_thread

from ..._core.redact import json_needle, masked_record
from ...errors import InputFileError
from ...records import Record
from .. import fdio
from .plan import STDIO
from .read import is_gzip

#: Lines per gzip member when a ``.gz`` OUTPUT is rewritten, so reading it back stays bounded.
MEMBER_LINES: Final = 1024
#: Text per gzip member that a batch of records is cut into (at a line's end).
MEMBER_BYTES: Final = 8 * 1024 * 1024


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
        elif path == STDIO:
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
            if self._fsync and (self._owned or self.path != STDIO):
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
