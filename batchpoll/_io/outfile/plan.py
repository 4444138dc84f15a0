"""Which files one run may touch: every path it reads or writes, checked before the first request.

batchpoll truncates, replaces or deletes only what it can prove it wrote. Before the first
request ``check_run_files`` refuses (``InputFileError``, exit 2) any plan that would write over
the input or over another of its own files, or into a place it cannot write, and
``check_replaceable`` a report file batchpoll did not write; ``repair.scan_output`` proves
OUTPUT's records batchpoll's before it is cut or rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ...errors import InputFileError
from .replace import create_sibling

STDIO: Final = "-"

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


def held_by_other(path: str) -> str | None:
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
        holder = lock_holder(fd)
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
    if (who := held_by_other("/proc/self/fd/2")) is not None:
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
    """That a file can be put at *path* the way ``replace.replace_atomically`` puts it: a
    probe in its directory, and no directory (or other non-file) already standing there."""
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):
        raise InputFileError(f"cannot write {part} {path}: it exists and is not a regular file")
    directory = os.path.dirname(target)
    try:
        fd, probe = create_sibling(target)
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


def lock_holder(fd: int) -> int | None:
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
