"""A throwaway redis-server on a free loopback port, for the shared-budget tests.

It keeps nothing on disk (``--save ''``, ``--appendonly no``), so a restart loses every key, the
worst case for a budget that lives in Redis. ``make unit`` installs redis-server from Debian's
packages when it is missing; without it the tests that need it are skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
HOST = "127.0.0.1"


def free_port(below: int = 65536) -> int:
    """A loopback TCP port under *below* that nothing listens on right now."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port < below:
            return port
    pytest.fail(f"no free loopback port below {below} in 100 tries")


#: A cluster node also listens on its port + 10000 (the cluster bus), which must be a port too.
CLUSTER_BUS_OFFSET = 10000


class RedisServer:
    """One redis-server process on ``port``, started and stopped by the test; restartable."""

    def __init__(self, port: int, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self._workdir = workdir
        self._extra = extra  # more redis-server options, e.g. ("--cluster-enabled", "yes")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and return once it answers PING (within 10 s, or fail the test)."""
        assert self._proc is None, "already running"
        log = (self._workdir / f"redis-{self.port}.log").open("ab")
        with log:
            self._proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _argv(self) -> list[str]:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        return [
            REDIS_SERVER,
            "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no",
            "--dir", str(self._workdir), "--daemonize", "no", "--loglevel", "warning",
            *self._extra,
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait until the process is gone."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _wait_ready(self) -> None:
        # Readiness, not synchronisation: a bounded number of attempts to get a PONG.
        for _ in range(1000):
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = (self._workdir / f"redis-{self.port}.log").read_text(errors="replace")
                pytest.fail(f"redis-server exited with {self._proc.returncode}: {log}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        pytest.fail(f"redis-server on port {self.port} did not answer PING within 10 s")


def running_redis(workdir: Path, extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """Body of a fixture: a started server on a free port, stopped after the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (make unit installs it from Debian's packages)")
    below = 65536 - CLUSTER_BUS_OFFSET if "--cluster-enabled" in extra else 65536
    server = RedisServer(free_port(below), workdir, extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()
