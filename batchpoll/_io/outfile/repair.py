"""Making OUTPUT ready for a run: proved batchpoll's, then a torn tail cut or the file rewritten.

A file is only ever cut or rewritten once ``scan_output`` has proved every line of it a
batchpoll record (a torn last line must look like the start of one, ``recordline.could_be_torn``):
anything else is refused, and the file is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from ..._core.recordline import record_of
from ...errors import InputFileError
from .append import encoded
from .lock import OutputLock
from .read import Tail, read_lines
from .replace import remove_stale_temporaries, replace_atomically


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
    remove_stale_temporaries(path)  # a rewrite killed with SIGKILL left it; we hold the lock
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
        if scan.dropped or scan.rewrite:
            kept = encoded(path, _kept(path, retry_statuses))
            replace_atomically(path, kept, keep_open=lock.adopt)
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
    rewrite: bool = False  # the torn part is inside a whole gzip member: cut by rewriting


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
    if (tail.torn or tail.unterminated) and not tail.ours:
        raise InputFileError(
            f"{part} {path}: its last {tail.torn} bytes are not the start of a batchpoll "
            "record; batchpoll changes only files it wrote, so it leaves this one as it is"
        )
    scan.torn = tail.torn + tail.unterminated
    scan.rewrite = bool(tail.unterminated)
    return scan


def _kept(path: str, retry_statuses: Collection[str]) -> Iterator[bytes]:
    """The lines a resume keeps: ``scan_output``'s rule, applied again while rewriting."""
    seen: set[str] = set()
    for line in read_lines(path, Tail()):
        found = record_of(line)
        if found is None or found[1] in retry_statuses or found[0] in seen:
            continue
        seen.add(found[0])
        yield line
