"""The shared budget against a real redis-server: window bound, shared pause, lost store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from redis.asyncio import Redis
from redis_server import RedisServer, free_port, running_redis
from structlog.testing import capture_logs

from batchpoll.errors import RateStoreError
from batchpoll.ratestore import SharedBudget
from batchpoll.simulator import max_in_window

pytestmark = pytest.mark.anyio

KEY = "test-budget"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free loopback port, stopped after it."""
    yield from running_redis(tmp_path)


async def budget(server: RedisServer, rate: float = 100.0, burst: int = 1) -> SharedBudget:
    """One process's view of the shared budget under KEY."""
    return await SharedBudget.connect(
        server.url, key=KEY, rate=rate, burst=burst, log=structlog.get_logger()
    )


async def book(budgets: list[SharedBudget], tasks_each: int, grants: int) -> list[float]:
    """Book *grants* grants from *tasks_each* tasks per budget at once; their send times."""
    times: list[float] = []

    async def reserver(shared: SharedBudget) -> None:
        while len(times) < grants:
            times.append((await shared.book()).send_at)

    async with anyio.create_task_group() as tg:
        for shared in budgets:
            for _ in range(tasks_each):
                tg.start_soon(reserver, shared)
    return times


async def test_first_grants_use_the_burst_then_one_per_interval(
    redis_server: RedisServer,
) -> None:
    """A fresh key lets `burst` requests go at once, then books one per 1/rate seconds."""
    async with await budget(redis_server, rate=1.0, burst=2) as shared:
        waits = [await shared.reserve() for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert 0.5 < waits[2] <= 1.0


async def test_three_processes_together_stay_within_the_window_bound(
    redis_server: RedisServer,
) -> None:
    """300 grants booked by 3 budgets x 3 tasks at 100/s, burst 1: at most 101 in any second."""
    budgets = [await budget(redis_server) for _ in range(3)]
    try:
        times = await book(budgets, tasks_each=3, grants=300)
    finally:
        for shared in budgets:
            await shared.aclose()
    assert len(times) >= 300
    # At least 100: the budget is used, not just capped; at most rate * 1 s + burst.
    assert 100 <= max_in_window(times) <= 101


async def test_pause_holds_every_budget_until_its_deadline(redis_server: RedisServer) -> None:
    """One budget's pause makes the others' next grants wait for it, spaced from its end."""
    first, second, third = [await budget(redis_server, rate=1.0) for _ in range(3)]
    try:
        await first.pause(60)
        a = await second.book()
        b = await third.book()
    finally:
        for shared in (first, second, third):
            await shared.aclose()
    assert 59 < a.wait <= 60
    assert 58 < b.wait <= 61
    # Spaced from the deadline on, not all due at it together: one interval apart.
    assert b.send_at - a.send_at == pytest.approx(1.0, abs=1e-6)


async def test_a_pause_extends_but_never_shortens(redis_server: RedisServer) -> None:
    """A shorter pause leaves a longer one in force; a longer one pushes the deadline out."""
    first, second = [await budget(redis_server) for _ in range(2)]
    try:
        await first.pause(60)
        await second.pause(1)
        shortened = await first.reserve()
        await second.pause(120)
        extended = await first.reserve()
    finally:
        await first.aclose()
        await second.aclose()
    assert 59 < shortened <= 60
    assert 119 < extended <= 120


async def test_a_budget_started_during_a_pause_waits_for_it(redis_server: RedisServer) -> None:
    """A process that connects while a pause runs learns of it at once."""
    async with await budget(redis_server) as first:
        await first.pause(30)
        async with await budget(redis_server) as late:
            assert 29 < await late.reserve() <= 30


async def test_a_store_that_lost_its_keys_gets_them_back(redis_server: RedisServer) -> None:
    """After Redis loses its data, a process re-writes the pause and bookings it knew of."""
    first, second = [await budget(redis_server, rate=10.0) for _ in range(2)]
    raw = Redis.from_url(redis_server.url)
    try:
        for _ in range(20):  # books two seconds ahead
            await first.reserve()
        await first.pause(30)
        await raw.flushall()
        again = await first.reserve()  # carries the pause it set back into the store
        other = await second.reserve()  # which knew of neither
    finally:
        await raw.aclose()
        await first.aclose()
        await second.aclose()
    assert 29 < again <= 30
    assert 29 < other <= 30.1
    assert other > again


async def test_keys_expire_once_idle(redis_server: RedisServer) -> None:
    """Both keys carry an expiry, so a key nobody uses any more goes away."""
    raw = Redis.from_url(redis_server.url)
    try:
        async with await budget(redis_server) as shared:
            await shared.reserve()
            await shared.pause(5)
            tat_ms = await raw.pttl(f"{KEY}:tat")
            pause_ms = await raw.pttl(f"{KEY}:pause")
    finally:
        await raw.aclose()
    assert 0 < tat_ms <= 1010  # one interval ahead, plus a second
    assert 5000 < pause_ms <= 6000


async def test_set_rate_spaces_later_grants(redis_server: RedisServer) -> None:
    """A lower rate books later grants further apart, as the local limiter's set_rate does."""
    async with await budget(redis_server, rate=100.0) as shared:
        assert await shared.reserve() == 0.0
        shared.set_rate(1.0)
        assert shared.rate == 1.0
        await shared.reserve()  # due one old interval after the first
        third = await shared.reserve()
    assert 0.5 < third <= 1.01


async def test_unreachable_store_at_start_is_exit_2_without_the_password(
    tmp_path: Path,
) -> None:
    """Connecting to a store nobody listens on raises RateStoreError, password masked."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RateStoreError) as caught:
        await SharedBudget.connect(url, key=KEY, rate=10, burst=1, log=structlog.get_logger())
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "hunter2" not in message
    assert "redis://:***@127.0.0.1:" in message
    assert "cannot use the rate store" in message


async def test_missing_redis_package_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redis package, connect() names the extra to install."""
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # makes the import fail
    with pytest.raises(RateStoreError, match=r"pip install 'batchpoll\[redis\]'"):
        await SharedBudget.connect(
            "redis://127.0.0.1:1/0", key=KEY, rate=10, burst=1, log=structlog.get_logger()
        )


async def test_lost_store_grants_nothing_then_resumes_within_the_bound(
    redis_server: RedisServer,
) -> None:
    """Redis stopped mid-run: no grant while it is down, grants resume once it is back, and
    every second of booked sends still holds at most 101; lost and back are logged once each."""
    budgets = [await budget(redis_server) for _ in range(3)]
    times: list[float] = []
    hundred = anyio.Event()

    async def reserver(shared: SharedBudget) -> None:
        # Like the engine: book, hold the request until its time, send, book the next.
        while len(times) < 300:
            grant = await shared.book()
            times.append(grant.send_at)
            if len(times) >= 100:
                hundred.set()
            await anyio.sleep(grant.wait)

    with capture_logs() as logs:
        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for shared in budgets:
                        for _ in range(2):
                            tg.start_soon(reserver, shared)
                    await hundred.wait()
                    await anyio.to_thread.run_sync(redis_server.stop)  # the process is gone
                    granted = len(times)
                    await anyio.sleep(0.5)  # the outage lasts half a second
                    assert len(times) == granted, "a grant while the store was down"
                    assert not any(shared.reachable for shared in budgets)
                    await anyio.to_thread.run_sync(redis_server.start)
        finally:
            for shared in budgets:
                await shared.aclose()
    assert len(times) >= 300
    assert max_in_window(times) <= 101
    events = [e["event"] for e in logs]
    assert events.count("rate_store_lost") == 3
    assert events.count("rate_store_back") == 3
