"""A request-rate limiter that books send times instead of sleeping (pure; time is passed in)."""

from __future__ import annotations

import math
from typing import Final

#: How much of the asked rate the engine leaves unused. A server counts requests as they
#: arrive, and they arrive a few milliseconds less evenly than they were sent (network,
#: scheduling on either side). Pacing at rate / (1 + HEADROOM) keeps any window of t >= 1 s
#: at the server within rate * t + burst while arrivals wander by up to HEADROOM * t seconds
#: less the engine's timer slack: 9 ms for a one-second window. On a loopback bench at
#: 2,000/s, exact pacing let the server count 2,015 to 2,022 in a second; this costs 1% of
#: the rate.
HEADROOM: Final = 0.01


def check_rate(rate: float) -> None:
    """Raise ``ValueError`` unless *rate* (requests per second) is a finite number > 0."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0, got {rate}")


def paced(rate: float) -> float:
    """The rate to book at so that *rate* holds where requests arrive (see ``HEADROOM``)."""
    return rate / (1 + HEADROOM)


class Gcra:
    """Generic Cell Rate Algorithm, "virtual scheduling" form (ATM Forum TM 4.0; the algorithm
    aiometer and redis-cell use).

    Guarantees: with each request sent at ``now + reserve(now)`` for nondecreasing ``now``, any
    window of ``t`` seconds holds at most ``rate * t + burst`` sends. A fresh limiter, or one
    idle long enough, lets ``burst`` requests go at once (not ``rate`` of them, the usual
    burst-at-start complaint about asyncio limiters), then one every ``1 / rate`` seconds.
    Idle time frees capacity back up to ``burst``, never beyond.
    """

    __slots__ = ("_burst", "_interval", "_rate", "_tat", "_tau")

    def __init__(self, rate: float, burst: int = 1) -> None:
        """``rate`` in requests per second (finite, > 0); ``burst`` requests (>= 1)."""
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._burst = burst
        self._rate = self._interval = self._tau = 0.0
        self.set_rate(rate)
        # GCRA "virtual scheduling": tat is the theoretical arrival time of the next request,
        # i.e. when it would be due if requests went exactly one interval apart. -inf: no
        # request yet (0.0 would make a clock that reads negative wait).
        self._tat = -math.inf

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """Requests allowed back to back."""
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Change the rate (requests per second) from the next booking on.

        Bookings already made keep their times; later ones are spaced ``1 / rate`` seconds apart
        after them, so a change never pulls an already-booked request earlier.
        """
        check_rate(rate)
        self._rate, self._interval = rate, 1.0 / rate
        # tau: how far ahead of its theoretical arrival time a request may go; (burst - 1)
        # intervals is exactly what lets `burst` requests through back to back.
        self._tau = (self._burst - 1) * self._interval

    def wait_time(self, now: float) -> float:
        """Seconds from ``now`` until one request would conform; 0.0 if it conforms now.

        Books nothing.
        """
        return max(0.0, self._tat - self._tau - now)

    def reserve(self, now: float) -> float:
        """Book one request at ``now`` (seconds); return how long to wait before sending it (>= 0).

        The request counts as sent at ``now + wait``; the caller does the waiting.
        """
        tat = max(self._tat, now)
        wait = max(0.0, tat - self._tau - now)
        self._tat = tat + self._interval
        return wait

    def book_late(self, now: float, slack: float) -> None:
        """Book a request sent at ``now`` as sent when it became sendable, up to ``slack`` ago.

        The caller sends only once ``wait_time(now)`` is 0, and its timer wakes it a little
        late. Booking each request at ``now`` would lose that lateness every time and drive the
        achieved rate below ``rate``; booking at the time it became sendable keeps the rate
        (ATM's GCRA calls this cell delay variation tolerance). Any window of ``t`` seconds then
        holds at most ``rate * (t + slack) + burst`` sends.
        """
        self.reserve(max(now - slack, min(now, self._tat - self._tau)))

    def __repr__(self) -> str:
        return f"Gcra(rate={self._rate!r}, burst={self._burst!r}, tat={self._tat!r})"
