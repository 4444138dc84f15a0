"""Talking to the shared store: the two scripts' calls, and what each reply teaches.

One ``StoreLink`` per process holds the Redis client, the keys, the arguments the scripts
take (interval, tolerance, how far ahead a booking may lie) and the latest ``tat``, pause and
clock offset any reply showed; it sends those back with every call, so a Redis restarted
without its data cannot forget a pause or hand out again the capacity already booked.
``ratestore`` decides what to do when a call fails.

Times read from the store are bounded, as a stepped clock or a foreign value could otherwise
stop every process for hours: a pause never lasts past ``LONGEST_PAUSE_S`` from now (it is cut
to that), and a booking more than ``max(MIN_AHEAD_S, (burst + SHARERS) / rate)`` ahead is
dropped; either is corrected in the store too, and logged (``rate_store_wait_capped``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Final

from structlog.typing import FilteringBoundLogger

from .._core.ratelimit import check_rate
from .._core.redact import mask_exact
from . import storescripts as scripts
from .storescripts import Reply

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: The longest pause batchpoll sets: backoff.parse_retry_after's cap on a Retry-After.
LONGEST_PAUSE_S: Final = 6 * 3600.0
# As the scripts take it: a second over, for a pause dated by this host's clock while lost.
_LONGEST_US: Final = round((LONGEST_PAUSE_S + 1.0) * 1e6)
# A booking further ahead than this is a stepped clock or a foreign value. Each process holds
# at most one grant at a time (the engine books for the slot it holds), so a sane store is
# never more than (sharing processes + burst) intervals ahead; SHARERS is a generous count of
# those, and the floor keeps fast rates from calling a short wait suspect. Dropping a bad time
# lets at most the grants then outstanding overlap new ones, once.
MIN_AHEAD_S: Final = 60.0
SHARERS: Final = 1000


def wall_us() -> int:
    """This host's wall clock, in microseconds."""
    return time.time_ns() // 1000


class StoreLink:
    """The calls of one process to the store, and what it has learnt from the replies."""

    __slots__ = (
        "_ahead_us",
        "_burst",
        "_client",
        "_interval_us",
        "_key",
        "_keys",
        "_log",
        "_offset_us",
        "_pause_seen",
        "_rate",
        "_rate_warned",
        "_tat_seen",
        "_tolerance_us",
        "declared",
    )

    def __init__(
        self, client: Redis, *, key: str, rate: float, burst: int, log: FilteringBoundLogger
    ) -> None:
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._client = client
        self._key = key
        self._keys = scripts.keys_of(key)
        self._log = log
        self._burst = burst
        check_rate(rate)
        # What this process was told to book at, before any AIMD change: the rate compared
        # with the other processes'.
        self.declared = float(rate)
        self._rate = 0.0
        self._interval_us = self._tolerance_us = self._ahead_us = 0
        self.set_rate(rate)
        # Server-time microseconds: the latest tat and pause deadline any reply showed us.
        self._tat_seen = self._pause_seen = 0
        # Server time minus local wall time (us), to date a pause set while the store is lost.
        self._offset_us = 0
        self._rate_warned = False

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Book at *rate* requests per second from the next grant on (as ``Gcra.set_rate``)."""
        check_rate(rate)
        self._rate = rate
        # Rounded up to whole microseconds, so rounding can only slow the rate down.
        self._interval_us = math.ceil(1e6 / rate)
        # tau of GCRA: (burst - 1) intervals is what lets `burst` requests through at once.
        self._tolerance_us = (self._burst - 1) * self._interval_us
        self._ahead_us = max(round(MIN_AHEAD_S * 1e6), (self._burst + SHARERS) * self._interval_us)

    async def load_scripts(self) -> None:
        for script in (scripts.RESERVE, scripts.PAUSE):
            await self._client.script_load(script)

    async def call_reserve(self) -> Reply:
        """Run RESERVE: one grant booked, its wait counted from the reply's ``now``."""
        args = (
            self._interval_us,
            self._tolerance_us,
            self._tat_seen,
            self._pause_seen,
            self._ahead_us,
            _LONGEST_US,
            repr(self.declared),
        )
        raw = await self._eval(scripts.RESERVE, args)
        most_wait_us = _LONGEST_US + self._ahead_us + self._interval_us
        return scripts.read_reserve(raw, self._keys[2], most_wait_us)

    async def call_pause(self, pause_us: int) -> Reply:
        """Run PAUSE: *pause_us* from now, or 0 to re-write the pause already known."""
        args = (pause_us, self._pause_seen, _LONGEST_US, repr(self.declared))
        return scripts.read_pause(await self._eval(scripts.PAUSE, args), self._keys[2])

    async def _eval(self, script: str, args: tuple[int | str, ...]) -> Any:
        """EVALSHA *script*, loading it first if the server lacks it (a restart empties its
        script cache)."""
        from redis.exceptions import NoScriptError

        sha = scripts.sha(script)
        try:
            return await self._client.evalsha(sha, len(self._keys), *self._keys, *args)
        except NoScriptError:
            await self._client.script_load(script)
            return await self._client.evalsha(sha, len(self._keys), *self._keys, *args)

    def seen(self, reply: Reply) -> None:
        """Learn the times a reply showed (bounded ones replace ours) and the clock offset."""
        if reply.cut > 0:
            self._log.warning(
                "rate_store_wait_capped",
                key=self._key,
                cut_s=round(reply.cut / 1e6, 3),
                hint="a time in the store lay further ahead than batchpoll ever books "
                "(a stepped clock or a value batchpoll did not write); it was cut back",
            )
            # The store holds the bounded times now; ours must not carry the old ones back.
            self._pause_seen = reply.pause
            if reply.tat:
                self._tat_seen = reply.tat
        else:
            self._tat_seen = max(self._tat_seen, reply.tat)
        self.note_pause(reply.pause)
        self._offset_us = reply.now - wall_us()
        other = reply.other_rate
        if other is not None and other != self.declared and not self._rate_warned:
            self._rate_warned = True
            self._log.warning(
                "rate_store_rate_differs",
                key=self._key,
                rate=self.declared,
                other_rate=other,
                hint="processes sharing one --rate-key should give the same --rate: "
                "each books at its own, so the total is neither",
            )

    def note_pause(self, deadline_us: int) -> None:
        """A pause until *deadline_us* (server time), unless a later one is known."""
        self._pause_seen = max(self._pause_seen, deadline_us)

    def pause_from_now(self, pause_us: int) -> int:
        """The server-time deadline of a pause of *pause_us* from now, by this host's clock."""
        return wall_us() + self._offset_us + pause_us

    def pause_left_s(self) -> float:
        """Seconds the latest known pause still runs (<= 0: none)."""
        return (self._pause_seen - wall_us() - self._offset_us) / 1e6

    def problem(self, exc: BaseException) -> str:
        """The error's text, or its type's name if it has none, without the store's password."""
        text = str(exc) or type(exc).__name__
        # Redis adds where in which script an error arose; our own errors carry a tag.
        text = text.split(" script: ", 1)[0].removeprefix("BATCHPOLL ").rstrip(". ")
        password = self._client.connection_pool.connection_kwargs.get("password")
        return mask_exact(text, password) if isinstance(password, str) and password else text

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"StoreLink(key={self._key!r}, rate={self._rate!r}, burst={self._burst!r})"
