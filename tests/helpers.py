"""Shared test plumbing: run the real engine and client against the in-process simulator."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from batchpoll._core.config import Secret, Settings
from batchpoll._core.source import Item, iter_items
from batchpoll._core.stats import RunStats
from batchpoll._io.client import ApiClient
from batchpoll._io.engine import Engine
from batchpoll.records import Record
from batchpoll.simulator import Simulator

KEY = "test-key-7c1d"

#: Fast settings for tests: the engine's rules are the same, only the clock runs quicker.
FAST = Settings(
    api_key=Secret(KEY),
    api_key_source="env CEKURA_API_KEY",
    concurrency=16,
    rate=2000.0,
    burst=50,
    interval=0.01,
    max_interval=0.05,
    request_timeout=5.0,
)


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal, with a bytes buffer for JSON logs."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty
        self.raw = io.BytesIO()

    def isatty(self) -> bool:
        return self._tty

    @property
    def buffer(self) -> io.BytesIO:  # type: ignore[override]
        return self.raw


class ListSink:
    """Keeps records in memory, in the order the engine wrote them."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def write(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


async def items_of(lines: Iterable[str]) -> AsyncIterator[Item]:
    """The input reader over *lines*, as the CLI would feed the engine."""
    for item in iter_items(["\n".join(lines).encode() + b"\n"]):
        yield item


async def poll(
    lines: Iterable[str], sim: Simulator, sink: ListSink | None = None, **overrides: Any
) -> tuple[list[Record], RunStats]:
    """Run the engine over *lines* against *sim*; return the records and the run's stats."""
    heartbeat_s = overrides.pop("heartbeat_s", 10.0)
    settings = replace(FAST, base_url=sim.url, **overrides)
    sink = sink if sink is not None else ListSink()
    async with ApiClient(settings) as client:
        engine = Engine(
            settings, client.poll, sink, log=structlog.get_logger(), heartbeat_s=heartbeat_s
        )
        stats = await engine.run(items_of(lines))
    return sink.records, stats


def by_id(records: Iterable[Record]) -> dict[str, Record]:
    """Records keyed by id; fails the test if any id has two."""
    out: dict[str, Record] = {}
    for rec in records:
        assert rec.progress_id not in out, f"two records for {rec.progress_id!r}"
        out[rec.progress_id] = rec
    return out


class FakeClock:
    """Time that moves only when a test says so (seconds, starting at 1000 to be unremarkable)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rate_between(arrivals: Iterable[float], start: float, end: float) -> float:
    """*arrivals* (seconds) in ``[start, end]`` per second; ``end`` must be after ``start``."""
    if end <= start:
        raise ValueError("end must be after start")
    return sum(start <= t <= end for t in arrivals) / (end - start)
