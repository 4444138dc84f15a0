"""Every few seconds, the facts the live progress view would show, as one log event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio
from structlog.typing import FilteringBoundLogger

from .._core.stats import Rate, RunStats, facts

#: Seconds between two heartbeat log events.
HEARTBEAT_S: Final = 10.0


async def beat(
    stats: RunStats,
    log: FilteringBoundLogger,
    clock: Callable[[], float],
    every: float = HEARTBEAT_S,
) -> None:
    """Log a ``heartbeat`` every *every* seconds until cancelled."""
    rate = Rate()
    rate.sample(clock(), stats.requests)
    while True:
        await anyio.sleep(every)
        now_rate = rate.sample(clock(), stats.requests)
        log.info("heartbeat", read=stats.ids, **facts(stats, now_rate).as_log())
