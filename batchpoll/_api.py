"""The library entry point: poll ids from inside another program's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

from ._core.config import Settings
from ._core.source import items_of_ids
from ._core.stats import RunStats
from .records import Record


class _StreamSink:
    """Hands records to the caller's loop; a caller that is behind holds the run back."""

    __slots__ = ("_tx",)

    def __init__(self, tx: MemoryObjectSendStream[Record]) -> None:
        self._tx = tx

    async def write(self, records: Sequence[Record]) -> None:
        import anyio

        try:
            for record in records:
                await self._tx.send(record)
        except anyio.BrokenResourceError:
            pass  # the caller left the block early and wants no more


@asynccontextmanager
async def poll_all(
    ids: Iterable[str] | AsyncIterable[str], settings: Settings, *, stats: RunStats | None = None
) -> AsyncIterator[AsyncIterator[Record]]:
    """Poll every id under *settings*; yield an async iterator of records as ids end.

    ::

        async with batchpoll.poll_all(ids, settings) as records:
            async for record in records:
                ...

    One record per distinct id, invalid ids included (as ``invalid_input``). Logs go through
    structlog as the program configured it; unconfigured, only warnings reach stderr. Leaving
    the block early stops polling: ids that had not ended get no record. Raises
    ``AuthRefused`` when the API refuses the key. ``settings.api_key`` must be set:
    ``Settings(api_key=Secret(...))``.
    """
    # Imported here so that importing batchpoll stays cheap (no aiohttp until it is used).
    import anyio

    from ._io.client import ApiClient
    from ._io.engine import Engine
    from ._io.logs import library_logger

    tx, rx = anyio.create_memory_object_stream[Record](1024)
    async with ApiClient(settings) as client, anyio.create_task_group() as tg:
        engine = Engine(settings, client.poll, _StreamSink(tx), log=library_logger(), stats=stats)

        async def run() -> None:
            async with tx:
                await engine.run(items_of_ids(ids))

        tg.start_soon(run)
        try:
            yield rx
        finally:
            engine.stop()
            rx.close()
