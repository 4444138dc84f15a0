"""Items waiting for their due time (pure): the scheduler's heap, so no task sleeps per id."""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class DueQueue(Generic[T]):
    """Items keyed by a due time in seconds; the earliest comes out first, FIFO among equals.

    Push and pop are O(log n); nothing here reads a clock, the caller passes ``now`` in.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        # Min-heap of (due, seq, item): seq is unique and increasing, so ties on due come out in
        # push order and the tuple comparison never reaches the items (which need no ordering).
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def push(self, due: float, item: T) -> None:
        """Add ``item``, due at ``due`` seconds (same clock as the ``now`` given to pop_due)."""
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def next_due(self) -> float | None:
        """The earliest due time, or None when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> T | None:
        """Remove and return the earliest item whose due time is <= ``now``, else None."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def pop_all(self) -> list[T]:
        """Remove and return every item, earliest first (FIFO among equal due times)."""
        entries, self._heap = self._heap, []
        entries.sort()
        return [item for _, _, item in entries]

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"DueQueue(size={len(self._heap)}, next_due={self.next_due()!r})"
