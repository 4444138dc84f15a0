"""Replacing a file whole: written beside it, fsynced, renamed over it, the directory fsynced.

The one way batchpoll replaces a file (a rewritten OUTPUT, the split files, the summary, the
JUnit report), so a reader of the path only ever sees the old contents or all the new ones,
and what the path is (a symlink, a mode, an owner) stays. No temporary file outlives a
failure, and one a killed process left is removed by the next run (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable
from typing import Final

_TMP_SUFFIX: Final = ".batchpoll-tmp"


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove the temporary files ``replace_atomically`` left beside *path* in a process that
    is gone (killed with SIGKILL mid-rewrite); return their names.

    Each is named after its process, so one whose process no longer exists is provably ours
    and abandoned. One of a live process (a run at work, or a pid reused) is left alone.
    """
    target = os.path.realpath(path)
    directory, base = os.path.split(target)
    removed: list[str] = []
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(base + ".") and name.endswith(_TMP_SUFFIX)):
            continue
        pid_text, _, number = name[len(base) + 1 : -len(_TMP_SUFFIX)].partition(".")
        if not (pid_text.isdigit() and number.isdigit()) or _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no such pid to ask about: leave it
    return True


def create_sibling(target: str) -> tuple[int, str]:
    """A new, empty, private file next to *target*; its descriptor and path."""
    for n in range(100):
        tmp = f"{target}.{os.getpid()}.{n}{_TMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", target)


def replace_atomically(
    path: str,
    data: bytes | Iterable[bytes],
    *,
    keep_open: Callable[[int], None] | None = None,
) -> None:
    """Make *path*'s contents *data* (bytes, or chunks streamed in order), all or nothing:
    written to a temporary file in the same directory, fsynced, renamed over *path*, and the
    directory fsynced, so the rename itself survives a crash.

    What *path* is stays: a symlink keeps pointing where it did and its target gets the
    contents; an existing file's mode (and owner, where the process may set it) carries over;
    a new file gets 0o644 less the umask. No temporary file survives any failure, an
    interrupt included. *keep_open*, if given, receives the new file's descriptor (open for
    reading and writing) before the rename and owns it afterwards: ``OutputLock`` takes its
    lock there, so the replaced file is never unlocked for a moment. Raises ``OSError``.
    """
    target = os.path.realpath(path)
    remove_stale_temporaries(target)
    try:
        before: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        before = None
    fd, tmp = create_sibling(target)
    handed_over = False
    try:
        if before is not None:
            os.fchmod(fd, stat.S_IMODE(before.st_mode))
            with contextlib.suppress(PermissionError):
                os.fchown(fd, before.st_uid, before.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o644 & ~umask)
        for chunk in (data,) if isinstance(data, bytes) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        if keep_open is not None:
            keep_open(fd)
            handed_over = True
        os.replace(tmp, target)
        tmp = ""
        _fsync_directory(os.path.dirname(target))
    finally:
        if not handed_over:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory is; some file systems refuse, harmlessly.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
