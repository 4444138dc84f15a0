"""The sink stage: finished records, in batches, to wherever they go.

``RecordSink`` is the seam; the sinks that write files (OUTPUT, the split files) are in
``outfile.append`` and ``outfile.split``, and ``TeeSink`` sends a batch to several of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..records import Record

#: Most records written in one batch (one syscall), and the record stream's buffer.
SINK_BUFFER: Final = 1024


class RecordSink(Protocol):
    """Where finished records go; ``write`` gets whole batches so a file sees few syscalls.

    It may wait (a consumer that is behind): the engine then holds finished records back.
    """

    async def write(self, records: Sequence[Record]) -> None: ...


async def write_records(
    rec_rx: MemoryObjectReceiveStream[Record],
    sink: RecordSink,
    written: Callable[[Sequence[Record]], None],
) -> None:
    """The sink stage: write whatever records are waiting as one batch, until the stream ends."""
    async with rec_rx:
        async for record in rec_rx:
            batch = [record]
            while len(batch) < SINK_BUFFER:
                try:
                    batch.append(rec_rx.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await sink.write(batch)
            written(batch)


class TeeSink:
    """Writes every batch to each of several sinks, in order."""

    __slots__ = ("_sinks",)

    def __init__(self, *sinks: RecordSink) -> None:
        self._sinks = sinks

    async def write(self, records: Sequence[Record]) -> None:
        for sink in self._sinks:
            await sink.write(records)
