"""The files a run writes: which ones it may touch, one writer each, and replacing one whole.

batchpoll truncates, replaces or deletes only what it can prove it wrote. Before the first
request ``check_run_files`` refuses (``InputFileError``, exit 2) any plan that would write over
the input or over another of its own files, or into a place it cannot write; the callers prove
a file's contents are batchpoll's (``output_file.scan_output`` for records). ``OutputLock`` makes a
file one run's for as long as the run lasts, and ``replace_file`` swaps a file's contents
without changing what the file is: a symlink stays a link, mode and owner are kept, and no
temporary file outlives a failure.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import InputFileError

STDIO: Final = "-"
_TMP_SUFFIX: Final = ".batchpoll-tmp"

#: A file's identity: (device, inode). Two paths name the same file when these are equal,
#: whatever the spelling, symlinks and hard links included.
FileId = tuple[int, int]


def file_id(path: str) -> FileId | None:
    """The identity of the file *path* names (links followed), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stdio_id(path: str, fd: int) -> FileId | None:
    """What *path* is: for ``-``, the file behind standard input/output (if a regular file)."""
    if path != STDIO:
        return file_id(path)
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    # A pipe or terminal cannot be another of our files; only a redirect to a file can.
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFiles:
    """Every path one run reads or writes; ``-`` is standard input (input) or output (output)."""

    input: str
    output: str
    summary: str | None = None
    junit: str | None = None
    split_dir: str | None = None
    split_names: tuple[str, ...] = ()  # the file names the split directory may hold


def check_run_files(files: RunFiles) -> None:
    """Refuse a plan in which one file plays two parts, or a report cannot be written.

    Raises ``InputFileError`` naming both parts. Reads nothing and writes nothing but a
    probe file, created and removed at once, in each report's directory.
    """
    named: list[tuple[str, str, FileId | None]] = [
        ("the input", files.input, _stdio_id(files.input, 0)),
        ("OUTPUT", files.output, _stdio_id(files.output, 1)),
    ]
    # Logs go to stderr: redirected into OUTPUT or the input (2>> ids.txt), a run would mix
    # them into its records, or read its own log lines back as ids for ever. Records on
    # stdout and logs on stderr sent to one file (> all.txt 2>&1) are the user's one stream,
    # as on a terminal, and allowed.
    errors = _stdio_id(STDIO, 2)
    if not (files.output == STDIO and errors is not None and errors == named[1][2]):
        named.append(("standard error", STDIO, errors))
    for part, path in (("--summary", files.summary), ("--junit", files.junit)):
        if path is not None:
            named.append((part, path, file_id(path)))
    if files.split_dir is not None:
        for name in files.split_names:
            path = os.path.join(files.split_dir, name)
            named.append((f"--split-by-status file {name}", path, file_id(path)))
    try:
        _refuse_doubles(named)
        _refuse_locked_stderr()
    except InputFileError as exc:
        if "standard error" in str(exc):
            _silence_stderr()  # else the refusal itself would land in that file
        raise
    if files.split_dir is not None:
        _refuse_inside(files.split_dir, named)
        _check_directory(files.split_dir, "--split-by-status")
    for part, path in (("--summary", files.summary), ("--junit", files.junit)):
        if path is not None:
            _check_writable(path, part)


def _refuse_doubles(named: list[tuple[str, str, FileId | None]]) -> None:
    seen: dict[FileId, tuple[str, str]] = {}
    spelt: dict[str, str] = {}
    for part, path, identity in named:
        where = os.path.realpath(path) if path != STDIO else None
        if where is not None and where in spelt:
            raise InputFileError(f"{part} {path} is also {spelt[where]}: give each its own file")
        if identity is not None:
            if identity in seen:
                other, other_path = seen[identity]
                raise InputFileError(
                    f"{part} {path} is the same file as {other} {other_path}: "
                    "give each its own file"
                )
            seen[identity] = (part, path)
        if where is not None:
            spelt[where] = f"{part} {path}"


def _held_by_other(path: str) -> str | None:
    """Who holds an exclusive lock on the file or directory *path* ("process N"), or None
    when nobody does or it cannot be opened (then nobody else can hold it either).

    A shared lock is refused while anyone holds the exclusive one, and is let go at once
    otherwise: only the test is wanted.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        return f"process {holder}" if holder is not None else "another process"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _refuse_locked_stderr() -> None:
    """Refuse a stderr redirected into a file another run holds (its OUTPUT, say): the logs
    would land among its records and its next --resume would refuse the file."""
    try:
        if not stat.S_ISREG(os.fstat(2).st_mode):
            return
    except OSError:
        return
    # A new open file description on the same file (Linux), so the test cannot disturb
    # descriptor 2's own; elsewhere there is nothing to test with.
    if (who := _held_by_other("/proc/self/fd/2")) is not None:
        raise InputFileError(
            f"standard error goes to a file {who} is writing: give the logs another place"
        )


def _silence_stderr() -> None:
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)


def _refuse_inside(directory: str, named: list[tuple[str, str, FileId | None]]) -> None:
    """The split directory may hold only its status files, not the input, OUTPUT or a report."""
    home = file_id(directory)
    if home is None:
        return  # made later; nothing can be in it yet
    for part, path, _ in named:
        if path == STDIO or part.startswith("--split"):
            continue
        if file_id(os.path.dirname(os.path.abspath(path)) or ".") == home:
            raise InputFileError(
                f"--split-by-status {directory} holds {part} {path}: give the split files a "
                "directory of their own"
            )


def _check_directory(directory: str, part: str) -> None:
    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise InputFileError(f"{part} {directory}: cannot write in this directory")
        return
    if os.path.lexists(directory):
        raise InputFileError(f"{part} {directory}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(f"{part} {directory}: cannot create it (no writable parent)")


def _check_writable(path: str, part: str) -> None:
    """That a file can be put at *path* the way ``replace_file`` puts it: a probe in its
    directory, and no directory (or other non-file) already standing there."""
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):
        raise InputFileError(f"cannot write {part} {path}: it exists and is not a regular file")
    directory = os.path.dirname(target)
    try:
        fd, probe = _create_sibling(target)
    except OSError as exc:
        raise InputFileError(
            f"cannot write {part} {path}: {exc.strerror or exc} (in {directory})"
        ) from None
    os.close(fd)
    os.unlink(probe)


#: How much of a report file is read to tell whether batchpoll wrote it.
PROOF_BYTES: Final = 16 * 1024 * 1024


def check_replaceable(path: str, part: str, looks_ours: Callable[[bytes], bool]) -> None:
    """Refuse (``InputFileError``) to replace a non-empty *path* that *looks_ours* does not
    recognise from its first ``PROOF_BYTES``: batchpoll replaces only what it wrote."""
    try:
        with open(path, "rb") as f:
            head = f.read(PROOF_BYTES)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputFileError(f"cannot read {part} {path}: {exc.strerror or exc}") from None
    if head and not looks_ours(head):
        raise InputFileError(
            f"{part} {path} exists and is not a file batchpoll wrote: batchpoll replaces only "
            "its own files, so give another path (or remove that file yourself)"
        )


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove the temporary files ``replace_file`` left beside *path* in a process that is gone
    (killed with SIGKILL mid-rewrite); return their names.

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


def _create_sibling(target: str) -> tuple[int, str]:
    """A new, empty, private file next to *target*; its descriptor and path."""
    for n in range(100):
        tmp = f"{target}.{os.getpid()}.{n}{_TMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", target)


def replace_file(
    path: str,
    chunks: Iterable[bytes],
    *,
    keep_open: Callable[[int], None] | None = None,
) -> None:
    """Make *path*'s contents *chunks*, all or nothing (written beside it, fsynced, renamed).

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
    fd, tmp = _create_sibling(target)
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
        for chunk in chunks:
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


class OutputLock:
    """An exclusive ``flock`` on a file (or directory) for the life of one run.

    The lock is on the file itself (the inode), so every spelling of its path and every hard
    link meets it, and the kernel drops it when the process dies, so a killed run never
    blocks the next ``--resume``. When the file is replaced (``replace_file``), the new file is
    locked before it takes the old one's place.
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
            holder = _lock_holder(fd)
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
    if (who := _held_by_other(os.path.dirname(os.path.realpath(path)))) is not None:
        raise InputFileError(
            f"{part} {path} is in the --split-by-status directory of {who}, which writes the "
            "files there: give this run a file elsewhere"
        )


def _lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on *fd*'s file, from Linux's ``/proc/locks``; else None."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 4982 fe:00:2148870 0 EOF"; "->" marks a waiter.
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None
