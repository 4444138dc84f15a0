"""The clients under test and how each one is started with the same flags.

batchpoll runs as the real CLI (`python -m batchpoll run`, logs on as JSON to a file, the sink
on, no progress view); each peer is a script in benchmarks/peers/ taking the flags of
peers/_common.py.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

PEERS = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class Client:
    name: str
    needs: tuple[str, ...]  # importable modules it runs on; missing ones skip the client
    rate: bool  # honours a request rate (workload b)
    scales: bool  # worth running at a million waiting ids (the naive ones would need GBs)
    streams: bool  # reads ids as it goes, so an id never polled may not be in memory yet
    loop: str  # event loop, for the results table

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.needs)


def _uvloop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


CLIENTS = {
    c.name: c
    for c in (
        Client("batchpoll", ("batchpoll",), True, scales=True, streams=True, loop=_uvloop()),
        Client("naive_aiohttp", ("aiohttp",), False, scales=False, streams=False, loop="asyncio"),
        Client("naive_httpx", ("httpx",), False, scales=False, streams=False, loop="asyncio"),
        Client("aiometer", ("aiometer",), True, scales=True, streams=False, loop="asyncio"),
        Client("ceiling", ("uvloop",), True, scales=True, streams=False, loop="uvloop"),
    )
}


@dataclass(frozen=True)
class Job:
    """One run's settings: every client gets the same ones, in its own flags."""

    ids: Path
    out: Path
    url: str
    concurrency: int
    interval: float
    rate: float | None = None  # None: no limit
    burst: int = 1
    deadline: float | None = None  # batchpoll's backstop; the harness ends every client itself


def command(client: str, job: Job) -> list[str]:
    common = ["-o", str(job.out), "--base-url", job.url, "--concurrency", str(job.concurrency)]
    if client == "batchpoll":
        # No rate limit is a huge rate with a burst of 1,000 (the flag has no "off"); the
        # interval is fixed like the peers' by capping its growth at the same value.
        rate, burst = (job.rate, job.burst) if job.rate else (1_000_000, 1000)
        cmd = [sys.executable, "-m", "batchpoll", "run", str(job.ids), *common]
        cmd += ["--interval", str(job.interval), "--max-interval", str(job.interval)]
        cmd += ["--rate", str(rate), "--burst", str(burst), "--fail-on", "none"]
        cmd += ["--log-format", "json", "--no-progress"]
        if job.deadline:
            cmd += ["--deadline", str(job.deadline)]
        return cmd
    script = "aiometer_client.py" if client == "aiometer" else f"{client}.py"
    cmd = [sys.executable, str(PEERS / script), str(job.ids), *common]
    cmd += ["--interval", str(job.interval)]
    if job.rate and CLIENTS[client].rate:
        cmd += ["--rate", str(job.rate), "--burst", str(job.burst)]
    return cmd
