"""One writer per file: an exclusive ``flock`` held on OUTPUT, a split directory or a report
for the whole run, so that no two runs write one file."""

from __future__ import annotations

import fcntl
import os
import stat

from ...errors import InputFileError
from .plan import STDIO, held_by_other, lock_holder


class OutputLock:
    """An exclusive ``flock`` on a file (or directory) for the life of one run.

    The lock is on the file itself (the inode), so every spelling of its path and every hard
    link meets it, and the kernel drops it when the process dies, so a killed run never
    blocks the next ``--resume``. When the file is replaced (``replace.replace_atomically``),
    the new file is locked before it takes the old one's place.
    """

    __slots__ = ("_fd", "_retired", "created", "part", "path")

    def __init__(
        self,
        path: str,
        part: str,
        *,
        directory: bool = False,
        fd: int | None = None,
        in_locked_directory: bool = False,
    ) -> None:
        """Open (creating a missing file) and lock *path*; *part* names it in messages.

        With *fd*, lock the file that descriptor is open on (standard output redirected to a
        file, say) instead of opening *path*. A file is also refused when its directory is
        locked by another run (a ``--split-by-status`` directory), unless the caller holds
        that lock itself (*in_locked_directory*). Raises ``InputFileError`` when another
        process holds a lock, naming its pid.
        """
        self.path = path
        self.part = part
        self._fd = -1
        self._retired: list[int] = []  # replaced files' descriptors, still locked (adopt)
        flags = os.O_RDONLY if directory else os.O_RDWR | os.O_CREAT | os.O_APPEND
        self.created = False
        try:
            if fd is not None:
                fd = os.dup(fd)
            else:
                try:  # first as a new file, to know whether a refusal should remove it again
                    fd = os.open(path, flags | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    self.created = not directory
                except (FileExistsError, IsADirectoryError):
                    fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InputFileError(f"cannot open {part} {path}: {exc.strerror or exc}") from None
        try:
            # A device or a FIFO (-o /dev/null) holds nothing to write twice; two runs may share it.
            if directory or stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            who = f"process {holder}" if holder is not None else "another process"
            raise InputFileError(
                f"{part} {path} is being written by {who} (another batchpoll run?): wait for "
                "it to end, or give this run another file"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise InputFileError(f"cannot lock {part} {path}: {exc.strerror or exc}") from None
        self._fd = fd
        if not directory and not in_locked_directory and path != STDIO:
            try:
                _refuse_locked_directory(path, part)
            except BaseException:
                self.close()
                raise

    @property
    def fd(self) -> int:
        """The locked descriptor (for a file: open for appending)."""
        return self._fd

    def adopt(self, fd: int) -> None:
        """Lock *fd*, a replacement about to be renamed over the file, and hold it instead.

        Nobody else can have it locked: only this process knows the temporary file.
        """
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        # The old file stays locked too, until close: let go before the rename, it could be
        # taken by another run in that moment and written to after it is gone.
        self._retired.append(self._fd)
        self._fd = fd

    def discard(self) -> None:
        """Let the file go, removing it if this lock created it and it is still empty: a run
        refused at start leaves no file behind that was not there before."""
        try:
            if self.created and self._fd >= 0 and os.fstat(self._fd).st_size == 0:
                os.unlink(self.path)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Let the file go (closing the descriptor drops the lock)."""
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _refuse_locked_directory(path: str, part: str) -> None:
    """Refuse *path* if its directory is another run's ``--split-by-status`` directory."""
    if (who := held_by_other(os.path.dirname(os.path.realpath(path)))) is not None:
        raise InputFileError(
            f"{part} {path} is in the --split-by-status directory of {who}, which writes the "
            "files there: give this run a file elsewhere"
        )
