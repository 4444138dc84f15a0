"""``--split-by-status DIR``: each record also appended to ``DIR/<status>.jsonl``.

Only ``<status>.jsonl`` files for statuses batchpoll writes are ever touched, each proved
batchpoll's first (``check_split_files``), and each rebuilt whole from OUTPUT on ``--resume``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..._core.recordline import record_of
from ...errors import InputFileError
from ...records import ALL_STATUSES, Record
from .append import LineSink, encoded
from .lock import OutputLock
from .repair import scan_output
from .replace import replace_atomically


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
        holds. Each existing status file is replaced whole (``replace.replace_atomically``)."""
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
                replace_atomically(path, encoded(path, lines), keep_open=lock.adopt)
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
