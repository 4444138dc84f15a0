"""Descriptor I/O: reads take what is there, writes wait on the loop, outlets never wait."""

from __future__ import annotations

import os
import select
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from batchpoll._io import fdio

pytestmark = pytest.mark.anyio


@contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with suppress(OSError):
                os.close(fd)


def fill(fd: int) -> int:
    """Write to *fd* until it takes no more; how many bytes went in."""
    os.set_blocking(fd, False)
    total = 0
    try:
        while True:
            total += os.write(fd, b"x" * 4096)
    except BlockingIOError:
        return total
    finally:
        os.set_blocking(fd, True)


def in_thread(call: Callable[[], object], timeout: float = 5.0) -> None:
    """Run *call* in a thread; fail (rather than hang) if it is not done within *timeout*."""
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "the call waited on the descriptor"


async def test_a_line_on_an_open_pipe_is_read_at_once() -> None:
    """A chunk comes as soon as it is written, without waiting for more or for the end."""
    with pipe() as (r, w):
        os.write(w, b"a-1\n")
        with anyio.fail_after(5):
            async for chunk in fdio.read_chunks(r, 65536):
                assert chunk == b"a-1\n"
                break
        assert os.get_blocking(r), "the descriptor's flags are put back"


async def test_a_cancel_ends_the_wait_on_an_idle_pipe() -> None:
    """Reading an idle pipe waits on the loop, so cancelling it ends the read at once."""

    async def read(fd: int) -> None:
        async for _ in fdio.read_chunks(fd, 65536):
            pass

    with pipe() as (r, _w), anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, r)
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert os.get_blocking(r)


async def test_a_regular_file_is_read_whole_in_chunks(tmp_path: Path) -> None:
    """A file is read to its end in chunks of at most the size asked for."""
    path = tmp_path / "ids.txt"
    data = b"".join(f"id-{i}\n".encode() for i in range(5000))
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with anyio.fail_after(5):
            chunks = [chunk async for chunk in fdio.read_chunks(fd, 4096)]
    finally:
        os.close(fd)
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) <= 4096


async def test_write_all_waits_for_a_full_pipe_and_sends_everything() -> None:
    """A write to a full pipe waits (on the loop) until the reader drains, then is whole."""
    data = bytes(range(256)) * 800  # 200 KiB, more than the pipe holds
    got = bytearray()
    with pipe() as (r, w), anyio.fail_after(5):
        filled = fill(w)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fdio.write_all, w, data)
            await wait_all_tasks_blocked()  # the writer is waiting, the loop is not
            async for chunk in fdio.read_chunks(r, 65536):
                got += chunk
                if len(got) == filled + len(data):
                    break
        assert os.get_blocking(w)
    assert bytes(got[filled:]) == data


async def test_a_cancel_ends_a_write_to_a_pipe_nobody_reads() -> None:
    """Cancelling a write to a full pipe ends it at once and leaves the flags as they were."""
    with pipe() as (_r, w), anyio.fail_after(5):
        fill(w)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fdio.write_all, w, b"record\n")
                await wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert os.get_blocking(w)
    fdio._stuck.discard(w)


def test_an_outlet_drops_past_its_limit_and_keeps_lines_whole() -> None:
    """An outlet on a pipe nobody reads never waits; past its limit it drops and counts,
    and a reader that catches up gets whole lines in order."""
    lines = [f"line-{i:05d} {'x' * 100}\n".encode() for i in range(3000)]
    got = bytearray()
    with pipe() as (r, w):
        out = fdio.Outlet(w, limit=64 * 1024)

        def write_all_lines() -> None:
            for line in lines:
                out.write(line)

        in_thread(write_all_lines)
        assert out.dropped > 0
        for _ in range(10_000):  # bounded: the outlet has at most ~128 KiB to give
            if select.select([r], [], [], 0.05)[0]:
                got += os.read(r, 65536)
            elif out.flush(0):
                break
        assert out.flush(0)
    received = bytes(got).splitlines(keepends=True)
    assert all(line in lines for line in received), "a torn or mixed line"
    assert received == sorted(received), "lines out of order"
    assert len(received) + out.dropped == len(lines)


def test_an_abandoned_outlet_points_its_descriptor_at_the_null_device() -> None:
    """Abandoned with writes still queued, an outlet drops them and its descriptor no longer
    names the stuck pipe, so a later flush cannot wait on it."""
    with pipe() as (_r, w):
        fill(w)
        out = fdio.Outlet(w)
        out.write(b"late line\n")
        out.abandon()
        assert not stat.S_ISFIFO(os.fstat(w).st_mode)
        assert out.dropped == 1
        in_thread(lambda: os.write(w, b"x" * 100_000))


def test_an_outlet_whose_reader_went_away_drops_quietly() -> None:
    """A reader that closed its end: writes are dropped and counted, never raised."""
    with pipe() as (r, w):
        os.close(r)
        out = fdio.Outlet(w)
        out.write(b"one\n")
        out.write(b"two\n")
        assert out.dropped == 2
