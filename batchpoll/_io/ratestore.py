"""One rate budget and one 429 pause, shared through Redis by every process using one key.

The GCRA of ``ratelimit`` runs inside Redis, one Lua script per grant, on the server's clock
(``TIME``), so processes on hosts whose clocks disagree still book on one timeline. The keys
and scripts are in ``storescripts``.

A store can fail in two ways, and they are told apart:

- **Unreachable** (connection refused or reset, a timeout, a server still loading): nothing is
  granted; ``reserve`` retries with capped backoff and returns only once a grant is booked, so
  losing Redis slows a run down, never speeds it up. It may last as long as the run.
- **Refusing** (an error reply: out of memory, read-only, a cluster slot elsewhere, an ACL, a
  value batchpoll did not write): also nothing granted, but a store that refuses rarely heals
  by itself, so once every call has been refused for ``refusal_limit_s`` (30 s), ``reserve``
  raises RateStoreError and the run ends (exit 2). At start, either ends the run at once.

Each process re-writes a running pause every ``REPUBLISH_S`` (``keep_pause``), so a Redis
restarted without its data has it back; the calls themselves, and what their replies teach,
are ``storelink``'s.

The ``redis`` package is an optional extra (``pip install 'batchpoll[redis]'``), imported only
when a store is connected.
"""

from __future__ import annotations

import math
import time
from random import Random
from typing import TYPE_CHECKING, Final

import anyio
from structlog.typing import FilteringBoundLogger

from .._core.backoff import retry_delay
from .._core.redact import masked_url
from ..errors import RateStoreError
from .storelink import StoreLink
from .storescripts import Reply, Unusable

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

#: Seconds to wait before retrying a failed call: full jitter from the first, doubling to the cap.
RETRY_BASE_S: Final = 0.05
RETRY_CAP_S: Final = 1.0
#: Seconds one connection attempt or one reply may take before the store counts as lost.
SOCKET_TIMEOUT_S: Final = 2.0
#: Seconds a store may refuse every call before the run ends (exit 2).
REFUSAL_LIMIT_S: Final = 30.0
#: Seconds between two re-writes of a running pause, so a store restarted empty has it back
#: before a process that connects to it afterwards polls.
REPUBLISH_S: Final = 0.1


class SharedBudget:
    """One rate budget and one pause shared by every process using the same key.

    Make one with :meth:`connect`. Every process sharing a key should use the same ``rate`` and
    ``burst``: each grant is spaced by the interval its caller asks for. The rate each process
    declared is kept in the store, and a different one is logged (``rate_store_rate_differs``).
    """

    __slots__ = (
        "_key",
        "_link",
        "_log",
        "_news",
        "_refusal_limit_s",
        "_refused_since",
        "_rng",
        "_shown",
        "_trouble",
        "_trouble_since",
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
        refusal_limit_s: float = REFUSAL_LIMIT_S,
    ) -> None:
        """Use :meth:`connect`; this only wires an already made client."""
        self._link = StoreLink(client, key=key, rate=rate, burst=burst, log=log)
        self._shown = shown_url
        self._key = key
        self._log = log
        self._rng = rng or Random()
        self._refusal_limit_s = refusal_limit_s
        # "lost" or "refused" from a failed call until one gets through; since when (monotonic
        # s), and since when every call was refused, with nothing unreachable in between.
        self._trouble: str | None = None
        self._trouble_since = 0.0
        self._refused_since: float | None = None
        # Set when a pause starts or moves out, to wake keep_pause; made by keep_pause.
        self._news: anyio.Event | None = None

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
        refusal_limit_s: float = REFUSAL_LIMIT_S,
    ) -> SharedBudget:
        """Connect to the store at *url* and check that it runs our scripts and takes writes.

        ``rate`` in requests per second (finite, > 0), ``burst`` requests (>= 1). Raises
        RateStoreError (exit code 2) when the ``redis`` package is missing or the store cannot
        be reached, refuses, or holds values batchpoll did not write; its message names the URL
        with any password masked. Later, a store refusing every call for *refusal_limit_s*
        seconds makes :meth:`book` raise RateStoreError.
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
        budget = cls(
            client,
            shown_url=shown,
            key=key,
            rate=rate,
            burst=burst,
            log=log,
            rng=rng,
            refusal_limit_s=refusal_limit_s,
        )
        try:
            # What the run needs, not a PING: both scripts load, and one runs, reading and
            # checking every key (a run started during a pause waits for it) and writing one.
            await budget._link.load_scripts()
            reply = await budget._link.call_pause(0)
        except (RedisError, OSError, Unusable) as exc:
            await client.aclose()
            problem = budget._link.problem(exc)
            if _unreachable(exc):
                hint = "start Redis there, fix --rate-store, or run without it"
            else:
                hint = "fix the store or the keys it names, or run without --rate-store"
            raise RateStoreError(f"cannot use the rate store {shown}: {problem}; {hint}") from None
        budget._seen(reply)
        return budget

    @property
    def reachable(self) -> bool:
        """False from a failed call to the store (lost or refused) until one gets through."""
        return self._trouble is None

    @property
    def rate(self) -> float:
        """Requests per second this process books at."""
        return self._link.rate

    @property
    def burst(self) -> int:
        """Requests allowed back to back, over all sharing processes."""
        return self._link.burst

    def set_rate(self, rate: float) -> None:
        """Book at *rate* requests per second from the next grant on (as ``Gcra.set_rate``)."""
        self._link.set_rate(rate)

    async def reserve(self) -> float:
        """Book one request in the shared budget; return seconds to wait before sending it.

        The wait (>= 0) counts from when this returns, and already covers any shared pause
        still running. While the store fails nothing is booked: this retries with capped
        exponential backoff (logging ``rate_store_lost`` or ``rate_store_refused`` once,
        ``rate_store_back`` when it answers again) and returns only once a grant is booked.
        Raises RateStoreError once the store has refused every call for ``refusal_limit_s``.
        """
        wait_us, _ = await self._book()
        return wait_us / 1e6

    async def _book(self) -> tuple[int, int]:
        """As :meth:`reserve`, in microseconds, with the store's clock when it booked."""
        from redis.exceptions import RedisError

        failures = 0
        while True:
            try:
                reply = await self._link.call_reserve()
            except (RedisError, OSError, Unusable) as exc:
                failures += 1
                self._failed(exc)
                self._raise_if_refused_too_long(exc)
                await anyio.sleep(
                    retry_delay(failures, base=RETRY_BASE_S, cap=RETRY_CAP_S, rng=self._rng)
                )
                continue
            self._back()
            self._seen(reply)
            return reply.wait, reply.now

    async def pause(self, seconds: float) -> None:
        """Hold every sharing process's grants for *seconds* from now, unless a later pause
        already does.

        Never raises for a failing store: the pause is then kept here (dated by the local clock
        and the last known server offset) and written as soon as a call gets through.
        """
        pause_us = math.ceil(seconds * 1e6)
        if pause_us <= 0:
            return
        if not await self._try_pause(pause_us):
            self._link.note_pause(self._link.pause_from_now(pause_us))
            self._wake_keeper()

    async def keep_pause(self, every: float = REPUBLISH_S) -> None:
        """Until cancelled: while a pause this process knows of runs, write it into the store
        every *every* seconds (> 0).

        So a store restarted empty, or one lost when the pause began, has the pause back
        within *every* seconds of answering again. Never raises for a failing store.
        """
        while True:
            left_s = self._link.pause_left_s()
            if left_s <= 0:
                self._news = anyio.Event()
                await self._news.wait()
                continue
            await anyio.sleep(min(every, left_s))
            if self._link.pause_left_s() > 0:
                await self._try_pause(0)

    async def aclose(self) -> None:
        """Close the connections to the store."""
        await self._link.aclose()

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
            f"SharedBudget(url={self._shown!r}, key={self._key!r}, rate={self.rate!r}, "
            f"burst={self.burst!r}, trouble={self._trouble!r}, "
            f"pause_left_s={max(0.0, round(self._link.pause_left_s(), 3))})"
        )

    # -- calls --------------------------------------------------------------------------------

    async def _try_pause(self, pause_us: int) -> bool:
        """Run PAUSE (*pause_us* from now, 0 to re-write what we know); whether it got through."""
        from redis.exceptions import RedisError

        try:
            reply = await self._link.call_pause(pause_us)
        except (RedisError, OSError, Unusable) as exc:
            self._failed(exc)
            return False
        self._back()
        self._seen(reply)
        return True

    def _seen(self, reply: Reply) -> None:
        self._link.seen(reply)
        self._wake_keeper()

    def _wake_keeper(self) -> None:
        """A pause runs: keep_pause, if waiting for one, has work."""
        if self._news is not None and self._link.pause_left_s() > 0:
            self._news.set()

    # -- what failures teach ------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """Note a failed call: log when the store goes from answering (or from the other kind
        of failure) to this kind, and time how long it has refused."""
        kind = "lost" if _unreachable(exc) else "refused"
        now = time.monotonic()
        if kind == "refused":
            if self._refused_since is None:
                self._refused_since = now
        else:
            self._refused_since = None
        if self._trouble == kind:
            return
        if self._trouble is None:
            self._trouble_since = now
        self._trouble = kind
        if kind == "lost":
            self._log.warning(
                "rate_store_lost",
                url=self._shown,
                error=self._link.problem(exc),
                hint="no request is granted until the store answers again",
            )
        else:
            self._log.warning(
                "rate_store_refused",
                url=self._shown,
                error=self._link.problem(exc),
                hint="no request is granted; the run ends if the store refuses for "
                f"{self._refusal_limit_s:g} s",
            )

    def _raise_if_refused_too_long(self, exc: BaseException) -> None:
        since = self._refused_since
        if since is not None and time.monotonic() - since >= self._refusal_limit_s:
            raise RateStoreError(
                f"the rate store {self._shown} refused every call for "
                f"{self._refusal_limit_s:g} s: {self._link.problem(exc)}; fix the store, then "
                "run again with --resume to finish the remaining ids"
            )

    def _back(self) -> None:
        self._refused_since = None
        if self._trouble is not None:
            down_s = time.monotonic() - self._trouble_since
            self._trouble = None
            self._log.info("rate_store_back", url=self._shown, down_s=round(down_s, 3))


def _unreachable(exc: BaseException) -> bool:
    """Whether *exc* says the store could not be reached, rather than that it said no."""
    from redis.exceptions import AuthenticationError, AuthorizationError, ExternalAuthProviderError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # redis-py files a refused password under ConnectionError; it is an answer all the same.
    if isinstance(exc, AuthenticationError | AuthorizationError | ExternalAuthProviderError):
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)
