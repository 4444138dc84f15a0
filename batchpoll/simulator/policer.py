"""The simulator's own rate policer: GCRA that admits or refuses a request, and never queues.

It is written apart from batchpoll's client-side limiter on purpose: the fake API must judge the
client by its own reading of the rate, not by the code under test.
"""

from __future__ import annotations


class GcraPolicer:
    """GCRA "virtual scheduling" policer over all requests together (rate in requests/s)."""

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        # A request may arrive up to (burst - 1) intervals ahead of its theoretical time; the
        # 1e-9 keeps float error from refusing a request that arrives exactly on time.
        self._tolerance = (burst - 1) * self._interval + 1e-9
        self._tat = float("-inf")  # theoretical arrival time of the next conforming request

    def __repr__(self) -> str:
        return f"GcraPolicer(interval={self._interval!r}, tat={self._tat!r})"

    def admit(self, now: float) -> bool:
        """Whether a request arriving at *now* (seconds) conforms; if so, it is counted."""
        tat = max(self._tat, now)
        if tat - now > self._tolerance:
            return False
        self._tat = tat + self._interval
        return True
