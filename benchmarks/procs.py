"""Processes for the harness: the bench server, one measured client run, and the machine.

A client's CPU and peak RSS come from `os.wait4` on its pid: the kernel's rusage of that
one child (user + sys seconds, ru_maxrss in KiB), the same figures
`getrusage(RUSAGE_CHILDREN)` deltas give, but per child, so one client's peak is never
mixed up with an earlier one's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY = "bench-key"  # the bench server accepts any key


def cores() -> tuple[int | None, int | None]:
    """(server core, client core): two distinct cores when the machine has them, else none."""
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[1]) if len(mine) >= 2 else (None, None)


def child_env() -> dict[str, str]:
    """The environment every client runs in: the key set, bytecode caching as users have it.

    PYTHONDONTWRITEBYTECODE (set on some sandboxes) would make every start-up compile from
    source, which no user's machine does, so it is dropped.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CEKURA_API_KEY"] = KEY
    return env


def pinned(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


class Server:
    """benchmarks/server.py in its own process, pinned to *core*; talks to its control endpoints."""

    def __init__(self, core: int | None, record: int) -> None:
        cmd = [sys.executable, str(HERE / "server.py"), "--record", str(record)]
        if core is not None:
            cmd += ["--core", str(core)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.close()
            raise RuntimeError(f"bench server did not start: {line!r}")
        self.url = match.group(1)

    def reset(self, *, polls: int = 3, pending: bool = False) -> None:
        query = "pending=1" if pending else f"polls={polls}"
        req = urllib.request.Request(f"{self.url}/__bench/reset?{query}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stats(self, *, windows: bool = False) -> dict[str, float]:
        url = f"{self.url}/__bench/stats?windows={int(windows)}"
        with urllib.request.urlopen(url, timeout=60) as resp:
            return dict(json.load(resp))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Exit:
    """How one client run ended: exit code, wall seconds, CPU seconds, peak RSS in KiB."""

    code: int
    wall_s: float
    cpu_s: float
    rss_kb: int
    stopped: bool  # ended by the harness (SIGTERM at the end of a window or a timeout)


def run_client(
    cmd: list[str],
    *,
    core: int | None,
    log: Path,
    timeout: float,
    stop: Callable[[float], bool] | None = None,
) -> Exit:
    """Run *cmd* pinned to *core* until it exits, *stop(elapsed)* says so, or *timeout* passes.

    A stopped client gets SIGTERM, then SIGKILL 15 s later. Polls every 20 ms, so wall time
    is good to about that; start-up is timed separately (hyperfine) for that reason.
    """
    with log.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=child_env(),
            preexec_fn=pinned(core),  # the harness runs no threads
        )
        stopped, term_at = False, None
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                elapsed = time.monotonic() - started
                if term_at is None and (elapsed > timeout or (stop is not None and stop(elapsed))):
                    proc.send_signal(signal.SIGTERM)
                    stopped, term_at = True, elapsed
                elif term_at is not None and elapsed > term_at + 15:
                    proc.kill()
                time.sleep(0.02)
        except BaseException:  # the harness itself is stopping: leave no client behind
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Exit(proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, stopped)


class CpuMeter:
    """Machine-wide busy CPU seconds from /proc/stat, to tell how much else was running."""

    HZ = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def busy_s() -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return float("nan")
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        return (user + nice + system + irq + softirq + steal) / CpuMeter.HZ


def machine() -> dict[str, str]:
    """nproc, CPU model, memory, OS and Python, for the results header."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 2**20:.1f} GiB"
    except OSError:
        mem = "unknown"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
