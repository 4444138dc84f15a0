"""What the fake API counts about the requests it sees: plain data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """Most of *times* (seconds, any order) within any closed interval ``[t, t + window]``."""
    ordered = sorted(times)
    best = start = 0
    # Two pointers: ordered[start..end] is the longest run ending at ordered[end] within window.
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(slots=True)
class SimStats:
    """What the server saw, counted where the contract's limits are checked.

    ``by_status`` counts the status lines sent (none for a dropped request, or one whose client
    hung up during ``latency``; a truncated or slow 200 counts as 200). ``polls_by_id`` counts
    the requests per id that got the real answer: past the key check, the rate limit and fault
    injection, and not redirected. ``faults`` counts injected faults by kind (``"error"``,
    ``"drop"``, ``"truncate"``, ``"slow"``, ``"garbage"``, ``"throttle"``; absent until one
    happens). ``arrivals`` holds one ``time.monotonic()`` per request.
    """

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    polls_by_id: dict[str, int] = field(default_factory=dict, repr=False)
    faults: dict[str, int] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list, repr=False)
    throttled_at: list[float] = field(default_factory=list, repr=False)  # arrivals answered 429

    def max_in_window(self, window: float = 1.0) -> int:
        """Most arrivals within any closed interval ``[t, t + window]`` (seconds)."""
        return max_in_window(self.arrivals, window)

    @property
    def max_per_second(self) -> int:
        """Most arrivals within any one second."""
        return self.max_in_window(1.0)
