"""The reader stage: input items into new ids for the scheduler, bad lines into records."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from structlog.typing import FilteringBoundLogger

from .._core.config import Settings
from .._core.source import InvalidInput, Item
from .._core.stats import RunStats
from ..records import Record


async def read_ids(
    items: AsyncIterable[Item],
    new_tx: MemoryObjectSendStream[tuple[float, str]],
    rec_tx: MemoryObjectSendStream[Record],
    *,
    started: float,
    settings: Settings,
    shards: int,
    stats: RunStats,
    log: FilteringBoundLogger,
    wake: Callable[[], None],
) -> None:
    """Send each id of *items*, due at *started*, to *new_tx*; each invalid line to *rec_tx*.

    *wake* tells the scheduler there is something new to take; *shards*: how many processes
    share the rate, for the warning that the rate cannot reach every id within max-interval.
    """
    async with new_tx, rec_tx:
        async for item in items:
            stats.ids += 1
            if isinstance(item, InvalidInput):
                await rec_tx.send(
                    Record(
                        progress_id=item.text,
                        status="invalid_input",
                        error=item.reason,
                        input_line=item.line_no,
                        input_sha256=item.sha256,
                    )
                )
                continue
            # A new id has been due since the run started, so earliest-due-first polls every
            # id once before any re-poll that fell due later. Its read time would not do: the
            # reader reads only a little ahead, so once the run is saturated every overdue
            # re-poll would beat every unread id, for ever.
            # send() yields to the loop on every item even with room in the buffer; at one id
            # per loop turn, new ids would trickle in behind a busy run's re-polls.
            try:
                new_tx.send_nowait((started, item))
            except anyio.WouldBlock:
                await new_tx.send((started, item))
            wake()
    stats.input_done = True
    best = stats.ids * shards / settings.rate
    log.info("input_read", ids=stats.ids, best_interval_s=round(best, 3))
    if best > settings.max_interval:
        log.warning(
            "rate_too_low",
            ids=stats.ids,
            rate=settings.rate,
            best_interval_s=round(best, 3),
            max_interval=settings.max_interval,
            hint="each id can be polled at best every ids/rate seconds",
        )
    wake()
