"""One rate budget and one 429 pause, shared through Redis by every process using one key.

The GCRA of ``ratelimit`` runs inside Redis, one Lua script per grant, on the server's clock
(``TIME``), so processes on hosts whose clocks disagree still book on one timeline. Two keys,
each expiring by itself once it no longer holds anything:

    {key}:tat    GCRA theoretical arrival time of the next request, server-time microseconds
    {key}:pause  deadline of the shared 429 pause, server-time microseconds

While Redis is unreachable nothing is granted: ``reserve`` retries with capped backoff and
returns only once a grant is booked, so losing Redis slows a run down, never speeds it up.
Each process also remembers the latest ``tat`` and pause it has seen and sends them with every
grant, so a Redis restarted without its data cannot forget a running pause or hand out again
the capacity those processes already booked.

The ``redis`` package is an optional extra (``pip install 'batchpoll[redis]'``), imported only
when a store is connected.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from random import Random
from typing import TYPE_CHECKING, Any, Final

import anyio
from structlog.typing import FilteringBoundLogger

from .backoff import retry_delay
from .config import masked_url
from .errors import RateStoreError
from .ratelimit import check_rate

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

#: Seconds to wait before retrying a lost store: full jitter from the first, doubling to the cap.
RETRY_BASE_S: Final = 0.05
RETRY_CAP_S: Final = 1.0
#: Seconds one connection attempt or one reply may take before the store counts as lost.
SOCKET_TIMEOUT_S: Final = 2.0

# Lua 5.1 numbers are doubles: microseconds since 1970 (~1.8e15) are exact below 2^53 (~9e15).
# Values are written with %.0f, since Redis would turn a bare number into a string its own way,
# possibly in exponent form.
_NOW: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function put(key, value)
  -- Kept 1 s past the moment it stops mattering, then gone.
  local ttl = math.ceil((value - now) / 1000) + 1000
  redis.call('SET', key, string.format('%.0f', value), 'PX', string.format('%.0f', ttl))
end
"""

# KEYS: tat, pause. ARGV: interval (us per request), tolerance ((burst - 1) intervals, us),
# the latest tat and pause deadline this caller has seen (us, 0 for none).
# Returns {wait, tat, pause, now}: wait in us from now; the rest in server-time us.
_RESERVE: Final = (
    _NOW
    + """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored_pause = tonumber(redis.call('GET', KEYS[2]) or 0)
local pause = math.max(stored_pause, tonumber(ARGV[4]))
if pause > now and pause > stored_pause then put(KEYS[2], pause) end
-- A pause moves "now" to its deadline: grants booked during it are spaced out from there,
-- instead of all falling due at the deadline together.
local start = math.max(now, pause)
-- GCRA "virtual scheduling", as in batchpoll/ratelimit.py.
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), tonumber(ARGV[3]), start)
local send_at = math.max(start, tat - tolerance)
tat = tat + interval
put(KEYS[1], tat)
return {send_at - now, tat, pause, now}
"""
)

# KEYS: pause. ARGV: seconds of pause, in us (0 only reads). Returns {deadline in force, now}.
_PAUSE: Final = (
    _NOW
    + """
local deadline = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or 0)
if deadline > now and deadline > current then
  put(KEYS[1], deadline)
  current = deadline
end
return {current, now}
"""
)


def _sha(script: str) -> str:
    # What SCRIPT LOAD answers, so EVALSHA can be tried before any load.
    return hashlib.sha1(script.encode()).hexdigest()


def _wall_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Grant:
    """One booked request: wait ``wait`` seconds (>= 0) from when it was handed out, then send.

    ``send_at`` is the time it is booked for on the store's clock (Unix seconds): the quantity
    the window bound holds for, whatever each host's clock says.
    """

    wait: float
    send_at: float


class SharedBudget:
    """One rate budget and one pause shared by every process using the same key.

    Make one with :meth:`connect`. Every process sharing a key should use the same ``rate`` and
    ``burst``: each grant is spaced by the interval its caller asks for.
    """

    __slots__ = (
        "_burst",
        "_client",
        "_interval_us",
        "_key",
        "_log",
        "_lost_since",
        "_offset_us",
        "_pause_key",
        "_pause_seen",
        "_rate",
        "_rng",
        "_shown",
        "_tat_key",
        "_tat_seen",
        "_tolerance_us",
    )

    def __init__(
        self,
        client: Redis,
        *,
        shown_url: str,
        key: str,
        rate: float,
        burst: int,
        log: FilteringBoundLogger,
        rng: Random | None = None,
    ) -> None:
        """Use :meth:`connect`; this only wires an already made client."""
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._client = client
        self._shown = shown_url
        self._key = key
        self._tat_key, self._pause_key = f"{key}:tat", f"{key}:pause"
        self._log = log
        self._rng = rng or Random()
        self._burst = burst
        self._rate = 0.0
        self._interval_us = self._tolerance_us = 0
        self.set_rate(rate)
        # Server-time microseconds: the latest tat and pause deadline any reply showed us.
        self._tat_seen = self._pause_seen = 0
        # Server time minus local wall time (us), to date a pause set while the store is lost.
        self._offset_us = 0
        self._lost_since: float | None = None  # monotonic s; None while the store answers

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        key: str,
        rate: float,
        burst: int,
        log: FilteringBoundLogger,
        rng: Random | None = None,
    ) -> SharedBudget:
        """Connect to the store at *url* and check that it runs our scripts.

        ``rate`` in requests per second (finite, > 0), ``burst`` requests (>= 1). Raises
        RateStoreError (exit code 2) when the ``redis`` package is missing or the store cannot
        be reached or used; its message names the URL with any password masked.
        """
        shown = masked_url(url)
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import RedisError
        except ImportError:
            raise RateStoreError(
                f"--rate-store {shown} needs the redis package: pip install 'batchpoll[redis]'"
            ) from None
        try:
            client = Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                # One retry at once on a fresh connection: after a restart, a pooled
                # connection the server closed fails its first command. Past that, our own
                # loop retries, with backoff, and logs.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        except ValueError as exc:
            raise RateStoreError(f"the rate store {shown} is not a usable URL: {exc}") from None
        budget = cls(client, shown_url=shown, key=key, rate=rate, burst=burst, log=log, rng=rng)
        try:
            await client.ping()
            # Reads the pause in force (a run started during one waits for it) and proves
            # that EVALSHA is allowed, which a PING alone would not.
            await budget._read_pause(0)
        except (RedisError, OSError) as exc:
            await client.aclose()
            problem = budget._scrubbed(exc).rstrip(". ")
            raise RateStoreError(
                f"cannot use the rate store {shown}: {problem}; start Redis there, fix "
                "--rate-store, or run without it"
            ) from None
        return budget

    @property
    def reachable(self) -> bool:
        """False from a failed call to the store until one gets through again."""
        return self._lost_since is None

    @property
    def rate(self) -> float:
        """Requests per second this process books at."""
        return self._rate

    @property
    def burst(self) -> int:
        """Requests allowed back to back, over all sharing processes."""
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Book at *rate* requests per second from the next grant on (as ``Gcra.set_rate``)."""
        check_rate(rate)
        self._rate = rate
        # Rounded up to whole microseconds, so rounding can only slow the rate down.
        self._interval_us = math.ceil(1e6 / rate)
        # tau of GCRA: (burst - 1) intervals is what lets `burst` requests through at once.
        self._tolerance_us = (self._burst - 1) * self._interval_us

    async def reserve(self) -> float:
        """Book one request in the shared budget; return seconds to wait before sending it.

        The wait (>= 0) counts from when this returns, and already covers any shared pause
        still running. While the store is unreachable nothing is booked: this retries with
        capped exponential backoff (logging ``rate_store_lost`` once, ``rate_store_back``
        when it answers again) and returns only once a grant is booked.
        """
        return (await self.book()).wait

    async def book(self) -> Grant:
        """As :meth:`reserve`, with the send time the grant is booked for as well."""
        from redis.exceptions import RedisError

        failures = 0
        while True:
            args = (self._interval_us, self._tolerance_us, self._tat_seen, self._pause_seen)
            try:
                reply = await self._eval(_RESERVE, (self._tat_key, self._pause_key), args)
            except (RedisError, OSError) as exc:
                failures += 1
                self._lost(exc)
                await anyio.sleep(
                    retry_delay(failures, base=RETRY_BASE_S, cap=RETRY_CAP_S, rng=self._rng)
                )
                continue
            self._back()
            wait_us, tat, pause, now = (int(value) for value in reply)
            self._seen(tat=tat, pause=pause, now=now)
            return Grant(wait=wait_us / 1e6, send_at=(now + wait_us) / 1e6)

    async def pause(self, seconds: float) -> None:
        """Hold every sharing process's grants for *seconds* from now, unless a later pause
        already does.

        Never raises for a lost store: the pause is then kept here (dated by the local clock
        and the last known server offset) and written with the next grant that gets through.
        """
        from redis.exceptions import RedisError

        pause_us = math.ceil(seconds * 1e6)
        if pause_us <= 0:
            return
        try:
            await self._read_pause(pause_us)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            self._pause_seen = max(self._pause_seen, _wall_us() + self._offset_us + pause_us)
            return
        self._back()

    async def aclose(self) -> None:
        """Close the connections to the store."""
        await self._client.aclose()

    async def __aenter__(self) -> SharedBudget:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"SharedBudget(url={self._shown!r}, key={self._key!r}, rate={self._rate!r}, "
            f"burst={self._burst!r}, reachable={self.reachable})"
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _read_pause(self, pause_us: int) -> None:
        reply = await self._eval(_PAUSE, (self._pause_key,), (pause_us,))
        deadline, now = (int(value) for value in reply)
        self._seen(tat=0, pause=deadline, now=now)

    async def _eval(self, script: str, keys: tuple[str, ...], args: tuple[int, ...]) -> Any:
        """EVALSHA *script*, loading it first if the server lacks it (a restart empties its
        script cache)."""
        from redis.exceptions import NoScriptError

        sha = _sha(script)
        try:
            return await self._client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(script)
            return await self._client.evalsha(sha, len(keys), *keys, *args)

    def _seen(self, *, tat: int, pause: int, now: int) -> None:
        self._tat_seen = max(self._tat_seen, tat)
        self._pause_seen = max(self._pause_seen, pause)
        self._offset_us = now - _wall_us()

    def _lost(self, exc: BaseException) -> None:
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            self._log.warning(
                "rate_store_lost",
                url=self._shown,
                error=self._scrubbed(exc),
                hint="no request is granted until the store answers again",
            )

    def _back(self) -> None:
        if self._lost_since is not None:
            down_s = time.monotonic() - self._lost_since
            self._lost_since = None
            self._log.info("rate_store_back", url=self._shown, down_s=round(down_s, 3))

    def _scrubbed(self, exc: BaseException) -> str:
        """The error's text, or its type's name if it has none, without the store's password."""
        text = str(exc) or type(exc).__name__
        password = self._client.connection_pool.connection_kwargs.get("password")
        return text.replace(password, "***") if isinstance(password, str) and password else text
