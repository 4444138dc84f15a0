"""Where a request's turn comes from: the local GCRA or a budget held in a shared store (pure).

The scheduler asks one ``Budget`` when the slot it holds may go, and tells it when the slot
went. The local budget answers from its own GCRA at once. A budget held in a store (Redis,
shared by several processes) can only answer after a round trip, so it says "ask the store"
(``ready_at`` returns None); the engine asks, and hands the answer back as a ``grant``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .ratelimit import Gcra

#: The most a local timer is forgiven for firing late (see ``LocalBudget.sent``): epoll and
#: uvloop count whole milliseconds.
TIMER_SLACK_S = 0.001


class Budget(Protocol):
    """The rate budget behind the scheduler; times in the scheduler's seconds."""

    def ready_at(self, now: float) -> float | None:
        """When the next request may go (``<= now``: at once), or None: ask the store."""
        ...

    def sent(self, now: float, *, held: bool) -> None:
        """The request went at *now*; *held*: it had waited for this budget's turn."""
        ...

    def grant(self, at: float) -> None:
        """The store's answer: the held request may go at *at*."""
        ...

    def void(self) -> None:
        """Forget a grant not yet used: a pause began, and the request must not go on it."""
        ...

    def set_rate(self, rate: float) -> None:
        """Book at *rate* requests per second from now on."""
        ...


class LocalBudget:
    """One process's own GCRA."""

    __slots__ = ("_slack", "limiter")

    def __init__(self, rate: float, burst: int) -> None:
        self.limiter = Gcra(rate, burst)
        # Never more than one emission interval: at most one extra request per window.
        self._slack = min(TIMER_SLACK_S, 1.0 / rate)

    def ready_at(self, now: float) -> float:
        return now + self.limiter.wait_time(now)

    def sent(self, now: float, *, held: bool) -> None:
        # A request that waited for its turn was woken by a timer, a little late: booked when
        # it became sendable (up to the slack ago), that lateness does not pile up into a lower
        # rate. One sendable when picked waited on no timer and is booked now, or arrival
        # jitter on top of the forgiveness lets the server count more than the rate.
        if held:
            self.limiter.book_late(now, self._slack)
        else:
            self.limiter.reserve(now)

    def grant(self, at: float) -> None:
        raise AssertionError("a local budget is never asked through the store")

    def void(self) -> None:
        pass

    def set_rate(self, rate: float) -> None:
        self.limiter.set_rate(rate)

    def __repr__(self) -> str:
        return f"LocalBudget({self.limiter!r})"


class StoreBudget:
    """A budget booked in a shared store: each request's turn is one grant from the store.

    The grant is booked before the wait (the store's clock decides), so a held request keeps
    its grant across wake-ups; only a pause voids it.
    """

    __slots__ = ("_grant", "_store_rate")

    def __init__(self, store_rate: Callable[[float], None]) -> None:
        """*store_rate*: tells the store a new rate."""
        self._store_rate = store_rate
        self._grant: float | None = None

    def ready_at(self, now: float) -> float | None:
        return self._grant

    def sent(self, now: float, *, held: bool) -> None:
        self._grant = None

    def grant(self, at: float) -> None:
        self._grant = at

    def void(self) -> None:
        self._grant = None

    def set_rate(self, rate: float) -> None:
        self._store_rate(rate)

    def __repr__(self) -> str:
        return f"StoreBudget(grant={self._grant!r})"
