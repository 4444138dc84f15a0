"""Descriptor I/O that never leaves the event loop's thread waiting on somebody else.

A regular file answers in bounded time, so it is read in a worker thread and written inline.
A pipe, FIFO, socket or terminal may wait for ever on another party -- a producer that has
not written yet, a reader that stopped reading -- so for those:

- input is read with ``os.read`` whenever the loop says the descriptor is readable
  (``read_chunks``), so each line is taken as it arrives;
- records go out with non-blocking writes, waiting on the loop for writability in between
  (``write_all``), so a cancel ends the wait;
- logs, the live view and the summary go to an ``Outlet``: written at once when the
  descriptor takes them, else queued (bounded, overflow dropped and counted) for a daemon
  thread that writes as the reader drains. At exit ``settle`` waits a bounded time for the
  queues, then points a still stuck descriptor at the null device, so no flush at
  interpreter shutdown can hang on it.

O_NONBLOCK belongs to the open file description, which the processes of a terminal or a
pipeline share (a shell's child often has fds 0, 1 and 2 on one description), so it is set
only for the length of one ``os.read`` or ``os.write``, under one lock, and put back at once:
the shell, the other processes and Python's own ``sys.stderr`` never see it.
"""

from __future__ import annotations

import atexit
import os
import select
import stat
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Final, NoReturn, TextIO

import anyio
import anyio.to_thread

#: Most bytes an Outlet holds for a reader that is behind; later writes are dropped.
QUEUE_LIMIT: Final = 1 << 20
#: Seconds a normal exit waits for the outlets' readers.
EXIT_WAIT_S: Final = 0.5

# Held while a descriptor's flags are changed for one call, so two threads never save each
# other's temporary O_NONBLOCK as the flags to restore, and os._exit never leaves it set.
_FLAGS = threading.Lock()


def waits(fd: int) -> bool:
    """Whether reading or writing *fd* may wait on another party: a pipe, socket or terminal.

    A descriptor that is not open is not one: using it fails at once, with the usual error.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


@contextmanager
def _nonblocking(fd: int) -> Iterator[None]:
    with _FLAGS:
        blocking = os.get_blocking(fd)
        if blocking:
            os.set_blocking(fd, False)
        try:
            yield
        finally:
            if blocking:
                os.set_blocking(fd, True)


def _read_now(fd: int, size: int) -> bytes | None:
    """What *fd* holds now, up to *size* bytes (``b""`` at its end), or None if nothing yet."""
    with _nonblocking(fd):
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None


def _write_now(fd: int, data: memoryview) -> int:
    """How many bytes of *data* *fd* took without waiting (0 when it is full)."""
    with _nonblocking(fd):
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0


async def read_chunks(fd: int, size: int) -> AsyncIterator[bytes]:
    """The bytes of *fd* up to its end, each chunk (at most *size*) as soon as it is there.

    A cancel ends the wait at once, whatever the descriptor.
    """
    if not waits(fd):
        # A file's read returns soon; abandoned on cancel, it only finishes unseen.
        while chunk := await anyio.to_thread.run_sync(os.read, fd, size, abandon_on_cancel=True):
            yield chunk
        return
    while True:
        got = _read_now(fd, size)
        if got is None:
            await anyio.wait_readable(fd)
        elif got:
            yield got
        else:
            return


async def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to a pipe, socket or terminal, waiting on the loop while it is full.

    Cancelled part-way, the rest is not written: the reader may be left a torn last line,
    and the descriptor is pointed at the null device at exit (see ``settle``).
    """
    rest = memoryview(data)
    while rest := rest[_write_now(fd, rest) :]:
        try:
            await anyio.wait_writable(fd)
        except anyio.get_cancelled_exc_class():
            _stuck.add(fd)
            raise


class Outlet:
    """Whole writes to one pipe or terminal from any thread, never waiting for its reader.

    A write goes straight out when the descriptor takes all of it; otherwise it, and every
    write after it, waits in a FIFO (a deque of memoryviews, the head possibly part-written)
    for a daemon thread that writes as the reader drains. Once more than ``QUEUE_LIMIT``
    bytes wait, new writes are dropped and counted in ``dropped``; a write already begun is
    always finished, so the reader never gets half a line. A reader that went away
    (``EPIPE``, a hung-up terminal) drops everything after.
    """

    __slots__ = ("_cond", "_gone", "_limit", "_queue", "_queued", "_thread", "dropped", "fd")

    def __init__(self, fd: int, *, limit: int = QUEUE_LIMIT) -> None:
        self.fd = fd
        self.dropped = 0  # writes not made: the queue was full, or the reader is gone
        self._limit = limit
        self._cond = threading.Condition()  # guards the queue; notified when it changes
        self._queue: deque[memoryview] = deque()
        self._queued = 0  # bytes in the queue
        self._thread: threading.Thread | None = None
        self._gone = False

    def __repr__(self) -> str:
        return f"Outlet(fd={self.fd}, queued={self._queued}, dropped={self.dropped})"

    def write(self, data: bytes) -> None:
        """Send *data* (one or more whole lines) now or later, or drop it; never wait."""
        with self._cond:
            if self._gone:
                self.dropped += 1
                return
            rest = memoryview(data)
            if not self._queue:
                try:
                    rest = rest[_write_now(self.fd, rest) :]
                except OSError:
                    self._drop_all()
                    self.dropped += 1
                    return
                if not rest:
                    return
            elif self._queued + len(rest) > self._limit:
                self.dropped += 1
                return
            self._queue.append(rest)
            self._queued += len(rest)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="outlet", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the queue to empty; whether it did."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout)

    def abandon(self) -> None:
        """Drop what still waits and point the descriptor at the null device, so nothing
        written to it later (a flush at interpreter shutdown) waits on the stuck reader."""
        with self._cond:
            if self._queue:
                _to_null(self.fd)
                self._drop_all()

    def _drop_all(self) -> None:
        self._gone = True
        self.dropped += len(self._queue)
        self._queue.clear()
        self._queued = 0
        self._cond.notify_all()

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        with self._cond:
            while True:
                if not self._queue:
                    self._cond.notify_all()  # flush() waiters
                    self._cond.wait()
                    continue
                head = self._queue[0]
                try:
                    n = _write_now(self.fd, head)
                except OSError:
                    self._drop_all()
                    continue
                self._queued -= n
                if n == len(head):
                    self._queue.popleft()
                    continue
                self._queue[0] = head[n:]
                # Wait for room without the lock, so writers can queue meanwhile. A hang-up
                # or error also ends the poll; the next write then sees it.
                self._cond.release()
                try:
                    poller.poll()
                finally:
                    self._cond.acquire()


# One outlet per descriptor, for as long as it names the same file (tests move fds 1 and 2).
_outlets: dict[int, tuple[tuple[int, int], Outlet]] = {}
_outlets_lock = threading.Lock()
# Descriptors a cancelled write_all left a torn batch on: their reader is stuck.
_stuck: set[int] = set()


def outlet_for(stream: TextIO) -> Outlet | None:
    """The outlet for *stream*'s descriptor if it is a pipe, socket or terminal; else None,
    and the stream is written as it always was (a file, or a test's in-memory stream)."""
    try:
        fd = stream.fileno()
        if not waits(fd):
            return None
        st = os.fstat(fd)
        stream.flush()  # whatever it holds goes before what the outlet writes
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    key = (st.st_dev, st.st_ino)
    with _outlets_lock:
        known = _outlets.get(fd)
        if known is not None and known[0] == key:
            return known[1]
        if not _outlets:
            atexit.register(settle, EXIT_WAIT_S)
        out = Outlet(fd)
        _outlets[fd] = (key, out)
        return out


def write_text(stream: TextIO, text: str) -> None:
    """Print *text* and a newline to *stream*, through its outlet if it has one."""
    if (out := outlet_for(stream)) is None:
        print(text, file=stream)
        return
    out.write((text + "\n").encode(stream.encoding or "utf-8", "replace"))


def dropped() -> int:
    """How many writes every outlet has dropped so far."""
    with _outlets_lock:
        return sum(out.dropped for _, out in _outlets.values())


def settle(timeout: float) -> None:
    """Wait up to *timeout* seconds in all for the outlets' readers; abandon those still stuck,
    and point descriptors a cancelled ``write_all`` left stuck at the null device."""
    deadline = time.monotonic() + timeout
    with _outlets_lock:
        outlets = [out for _, out in _outlets.values()]
    for out in outlets:
        if not out.flush(max(0.0, deadline - time.monotonic())):
            out.abandon()
    with _FLAGS:
        for fd in _stuck:
            _to_null(fd)
        _stuck.clear()


def exit_now(code: int) -> NoReturn:
    """``os._exit(code)``, but never while a descriptor's O_NONBLOCK is set for one call."""
    _FLAGS.acquire(timeout=1.0)
    os._exit(code)


def _to_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
