"""Stuck streams: an idle producer or a reader that stopped reading never stalls the run.

Each test runs the real CLI in a child process whose stdin, stdout or stderr is a pipe or a
pty the test holds open; the simulator runs here and counts what the child asks for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest
from helpers import KEY

from batchpoll.simulator import SimSettings, Simulator, running_simulator

pytestmark = pytest.mark.anyio

#: Every id ends at its first poll, so records come as fast as the rate allows.
AT_ONCE = SimSettings(seed=5, api_key=KEY, min_polls=1, max_polls=1)


def command(sim: Simulator, source: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "batchpoll", "run", source, "--base-url", sim.url,
        "--rate", "3000", "--burst", "50", "--interval", "0.01", "--max-interval", "0.02",
        "--fail-on", "none", *extra,
    ]  # fmt: skip


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    return base | {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY} | extra


@contextmanager
def descriptors(*fds: int) -> Iterator[list[int]]:
    """*fds*, closed at the end unless the test closed them already (then set to -1)."""
    held = list(fds)
    try:
        yield held
    finally:
        for fd in held:
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)


@asynccontextmanager
async def child(cmd: list[str], tmp_path: Path, **kwargs: Any) -> AsyncIterator[anyio.abc.Process]:
    """The CLI as a child process; killed at the end if a failed test left it running."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    kwargs.setdefault("env", env(tmp_path))
    proc = await anyio.open_process(cmd, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.wait()
            await proc.aclose()


def whole_records(out: Path) -> list[dict[str, object]]:
    data = out.read_bytes()
    assert data.endswith(b"\n"), "no records, or a torn last line"
    return [orjson.loads(line) for line in data.splitlines()]


def ids_file(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


async def polled(sim: Simulator, pid: str) -> None:
    await sim.wait_until(lambda st: pid in st.polls_by_id)


async def test_ids_on_an_open_pipe_are_polled_as_their_lines_arrive(tmp_path: Path) -> None:
    """Each id written to a stdin pipe that stays open is polled at once (follow mode)."""
    out = tmp_path / "out.jsonl"
    async with running_simulator(AT_ONCE) as sim:
        with descriptors(*os.pipe()) as fds:
            cmd = command(sim, "-", "-o", str(out))
            async with child(cmd, tmp_path, stdin=fds[0]) as proc:
                os.close(fds[0])
                fds[0] = -1
                os.write(fds[1], b"follow-1\n")
                with anyio.fail_after(15):  # the child's start-up included
                    await polled(sim, "follow-1")
                os.write(fds[1], b"follow-2\n")
                with anyio.fail_after(5):
                    await polled(sim, "follow-2")
                os.close(fds[1])
                fds[1] = -1
                with anyio.fail_after(10):
                    assert await proc.wait() == 0
    assert sorted(r["progress_id"] for r in whole_records(out)) == ["follow-1", "follow-2"]


async def test_a_deadline_ends_a_run_following_an_open_pipe(tmp_path: Path) -> None:
    """--deadline bounds a run whose producer keeps its pipe open: it ends within the
    deadline plus READ_AFTER_DEADLINE_S, the id it read ended, the pipe still open."""
    from batchpoll._io.engine import READ_AFTER_DEADLINE_S

    out = tmp_path / "out.jsonl"
    async with running_simulator(AT_ONCE) as sim:
        with descriptors(*os.pipe()) as fds:
            cmd = command(sim, "-", "-o", str(out), "--deadline", "2")
            async with child(cmd, tmp_path, stdin=fds[0]) as proc:
                os.close(fds[0])
                fds[0] = -1
                os.write(fds[1], b"follow-1\n")
                with anyio.fail_after(15 + READ_AFTER_DEADLINE_S):  # start-up included
                    assert await proc.wait() == 0
    assert [r["progress_id"] for r in whole_records(out)] == ["follow-1"]


@pytest.mark.parametrize(
    ("terminal", "signum", "code"),
    [(False, signal.SIGTERM, 143), (True, signal.SIGINT, 130)],
    ids=["pipe-sigterm", "tty-sigint"],
)
async def test_a_signal_ends_a_run_waiting_on_idle_stdin(
    tmp_path: Path, terminal: bool, signum: int, code: int
) -> None:
    """With stdin an idle pipe or terminal, SIGTERM/SIGINT end the run within 5 s."""
    write_end, read_end = os.openpty() if terminal else os.pipe()[::-1]
    async with running_simulator(AT_ONCE) as sim:
        with descriptors(write_end, read_end) as fds:
            cmd = command(sim, "-", "-o", str(tmp_path / "out.jsonl"))
            async with child(cmd, tmp_path, stdin=read_end) as proc:
                os.write(write_end, b"idle-1\n")
                with anyio.fail_after(15):
                    await polled(sim, "idle-1")
                proc.send_signal(signum)
                with anyio.fail_after(5):
                    assert await proc.wait() == code
            assert fds[0] >= 0, "the producer's end stayed open throughout"


@asynccontextmanager
async def stdout_stuck(
    sim: Simulator, tmp_path: Path, requests: int = 600, ids: int = 2000, **kwargs: Any
) -> AsyncIterator[anyio.abc.Process]:
    """A run writing records to a stdout pipe nobody reads, once that pipe must be full."""
    path = ids_file(tmp_path, [f"stuck-{i}" for i in range(ids)])
    # The read end stays open and unread until the child has gone.
    with descriptors(*os.pipe()) as fds:
        async with child(command(sim, str(path)), tmp_path, stdout=fds[1], **kwargs) as proc:
            os.close(fds[1])
            fds[1] = -1
            # 600 records of over 250 bytes are more than a 64 KiB pipe holds.
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= requests)
            yield proc


async def test_sigterm_ends_a_run_whose_stdout_pipe_is_never_read(tmp_path: Path) -> None:
    """Records on a stdout pipe nobody reads, the engine itself held up behind a full record
    buffer: SIGTERM still exits 143 within 5 s, without a traceback."""
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        # 1,100 answers: past the pipe and most of the 1,024-record buffer (the engine stops
        # at about 1,170), so the engine is waiting to hand over a record too.
        async with (
            running_simulator(SimSettings(seed=5, api_key=KEY, max_polls=2)) as sim,
            stdout_stuck(sim, tmp_path, requests=1100, ids=5000, stderr=stderr) as proc,
        ):
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(5):
                assert await proc.wait() == 143
    assert b"Traceback" not in err.read_bytes()


async def test_a_second_sigterm_ends_a_stuck_sink_at_once(tmp_path: Path) -> None:
    """A second SIGTERM exits 143 at once, not after the stuck sink's grace runs out."""
    async with (
        running_simulator(AT_ONCE) as sim,
        stdout_stuck(sim, tmp_path, stderr=subprocess.PIPE) as proc,
    ):
        assert proc.stderr is not None
        proc.send_signal(signal.SIGTERM)
        seen = b""
        with anyio.fail_after(5):
            while b'"stopping"' not in seen:
                seen += await proc.stderr.receive()
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(1.5):  # the grace is 3 s
            assert await proc.wait() == 143


async def test_sigint_ends_a_run_whose_terminal_is_never_read(tmp_path: Path) -> None:
    """stderr a terminal nobody reads, with debug logs and the live view: SIGINT exits 130
    within 5 s and OUTPUT holds only whole lines."""
    # flaky- ids fail every poll, so each poll logs a debug line: far more than a pty holds.
    ids = ids_file(tmp_path, [f"flaky-{i}" for i in range(200)] + [f"ok-{i}" for i in range(300)])
    out = tmp_path / "out.jsonl"
    async with running_simulator(AT_ONCE) as sim:
        master, slave = os.openpty()
        with descriptors(master, slave):
            cmd = command(sim, str(ids), "-o", str(out), "--log-level", "debug")
            cmd += ["--max-retries", "1000"]
            async with child(cmd, tmp_path, stderr=slave, env=env(tmp_path, TERM="xterm")) as proc:
                with anyio.fail_after(20):
                    await sim.wait_until(lambda st: st.requests >= 3000)
                proc.send_signal(signal.SIGINT)
                with anyio.fail_after(5):
                    assert await proc.wait() == 130
    assert len(whole_records(out)) > 0


async def test_a_record_for_a_sink_given_up_on_is_dropped_not_raised() -> None:
    """After a stop whose sink was given up on (the grace after a signal), handing over a
    record, waiting or not, drops it quietly: the id has no record, so --resume polls it."""
    from batchpoll._io.channels import send_shielded
    from batchpoll.records import Record

    record = Record(progress_id="late", status="completed")
    tx, rx = anyio.create_memory_object_stream[Record](0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_shielded, tx, record)  # waits: nobody receives
        await anyio.wait_all_tasks_blocked()
        rx.close()  # the sink stage cancelled, as the grace does
    await send_shielded(tx, record)  # and once it is gone: no wait, no error
    tx.close()
