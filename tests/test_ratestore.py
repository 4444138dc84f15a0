"""The shared budget against a real redis-server: window bound, shared pause, lost store."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import pytest
import structlog
from helpers import FAST, ListSink, items_of
from helpers import KEY as API_KEY
from redis.asyncio import Redis
from redis_server import RedisServer, free_port, running_redis
from structlog.testing import capture_logs

from batchpoll._core.config import load_settings
from batchpoll._io.client import ApiClient
from batchpoll._io.engine import Engine
from batchpoll._io.ratestore import SharedBudget
from batchpoll._io.storescripts import keys_of
from batchpoll.errors import ConfigError, RateStoreError
from batchpoll.simulator import SimSettings, Simulator, max_in_window, running_simulator

pytestmark = pytest.mark.anyio


@dataclass(frozen=True, slots=True)
class Grant:
    """One booked request: wait ``wait`` s from when it was handed out; ``send_at`` is the
    time it is booked for on the store's clock (Unix s), which the window bound holds for."""

    wait: float
    send_at: float


async def grant(shared: SharedBudget) -> Grant:
    """Book one request as ``reserve`` does, with the store's send time as well."""
    wait_us, now_us = await shared._book()
    return Grant(wait=wait_us / 1e6, send_at=(now_us + wait_us) / 1e6)


KEY = "test-budget"
TAT, PAUSE, RATE = keys_of(KEY)


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
            times.append((await grant(shared)).send_at)

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
        a = await grant(second)
        b = await grant(third)
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
    """Every key carries an expiry, so a key nobody uses any more goes away."""
    raw = Redis.from_url(redis_server.url)
    try:
        async with await budget(redis_server) as shared:
            await shared.reserve()
            await shared.pause(5)
            tat_ms = await raw.pttl(TAT)
            pause_ms = await raw.pttl(PAUSE)
            rate_ms = await raw.pttl(RATE)
    finally:
        await raw.aclose()
    assert 0 < tat_ms <= 1010  # one interval ahead, plus a second
    assert 5000 < pause_ms <= 6000
    assert 0 < rate_ms <= 6000


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
            g = await grant(shared)
            times.append(g.send_at)
            if len(times) >= 100:
                hundred.set()
            await anyio.sleep(g.wait)

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


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Return once *check* holds, trying every 10 ms; fail the test after *seconds*."""
    with anyio.fail_after(seconds):
        # Redis offers no event to wait on for these; the loop is bounded by fail_after.
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def out_of_memory(raw: Redis) -> None:
    """Redis at maxmemory with noeviction: every write is refused with OOM."""
    await raw.config_set("maxmemory", "1")
    await raw.config_set("maxmemory-policy", "noeviction")


def setting(key: str, value: str) -> Callable[[Redis], Awaitable[object]]:
    """Something else writes *value* under *key*."""
    return lambda raw: raw.set(key, value)


# What breaks the store, and what the error must name.
REFUSALS = [
    pytest.param(setting(TAT, "abc"), f"{TAT} holds a value", id="text-in-tat"),
    pytest.param(setting(PAUSE, "abc"), f"{PAUSE} holds a value", id="text-in-pause"),
    pytest.param(setting(PAUSE, "1.5e15"), f"{PAUSE} holds a value", id="float-in-pause"),
    pytest.param(setting(TAT, "-7"), f"{TAT} holds a value", id="negative-tat"),
    pytest.param(setting(RATE, "fast"), f"{RATE} holds a value", id="text-in-rate"),
    pytest.param(lambda raw: raw.hset(PAUSE, "a", "1"), f"{PAUSE} cannot be read", id="hash"),
    pytest.param(out_of_memory, "maxmemory", id="out-of-memory"),
]


@pytest.mark.parametrize(("breaks", "named"), REFUSALS)
async def test_a_store_refusing_at_start_is_exit_2_naming_why(
    redis_server: RedisServer, breaks: Callable[[Redis], Awaitable[object]], named: str
) -> None:
    """A store that answers with an error, or holds a value batchpoll did not write, fails
    connect() with RateStoreError (exit 2) naming the key or the cause, not a traceback."""
    raw = Redis.from_url(redis_server.url)
    try:
        await breaks(raw)
        with pytest.raises(RateStoreError) as caught:
            await budget(redis_server)
    finally:
        await raw.aclose()
    assert caught.value.exit_code == 2
    assert "cannot use the rate store" in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.parametrize(("breaks", "named"), [REFUSALS[1], REFUSALS[-1]])
async def test_a_store_refusing_mid_run_ends_booking_after_the_limit(
    redis_server: RedisServer, breaks: Callable[[Redis], Awaitable[object]], named: str
) -> None:
    """A store that starts refusing grants nothing, logs rate_store_refused once (not lost),
    and reserve() raises RateStoreError once the refusals have lasted the limit."""
    raw = Redis.from_url(redis_server.url)
    shared = await SharedBudget.connect(
        redis_server.url, key=KEY, rate=100, burst=1, log=structlog.get_logger(),
        refusal_limit_s=0.3,
    )  # fmt: skip
    with capture_logs() as logs:
        try:
            assert await shared.reserve() == 0.0
            await breaks(raw)
            with anyio.fail_after(10), pytest.raises(RateStoreError) as caught:
                await shared.reserve()
        finally:
            await shared.aclose()
            await raw.aclose()
    assert caught.value.exit_code == 2
    assert "refused every call for 0.3 s" in str(caught.value)
    assert named in str(caught.value)
    refused = [e for e in logs if e["event"] == "rate_store_refused"]
    assert len(refused) == 1
    assert named in refused[0]["error"]
    assert not any(e["event"] == "rate_store_lost" for e in logs)


async def test_a_refusal_that_heals_within_the_limit_only_delays(
    redis_server: RedisServer,
) -> None:
    """A bad value removed before the limit: the waiting grant is booked, and refused and
    back are logged once each."""
    raw = Redis.from_url(redis_server.url)
    grants: list[Grant] = []

    async def not_reachable() -> bool:
        return not shared.reachable

    with capture_logs() as logs:
        try:
            async with await budget(redis_server) as shared, anyio.create_task_group() as tg:
                await raw.set(PAUSE, "abc")

                async def book_one() -> None:
                    grants.append(await grant(shared))

                tg.start_soon(book_one)
                await until(not_reachable)
                assert not grants
                await raw.delete(PAUSE)
        finally:
            await raw.aclose()
    assert len(grants) == 1
    assert grants[0].wait <= 0.01
    events = [e["event"] for e in logs]
    assert events.count("rate_store_refused") == 1
    assert events.count("rate_store_back") == 1


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    """A one-node Redis Cluster of this test's own, before any slot is assigned."""
    yield from running_redis(
        tmp_path, ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    )


async def command(raw: Redis, *args: str) -> object:
    """One raw Redis command's reply."""
    return await raw.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped upstream


async def test_a_cluster_node_serves_every_key_of_a_budget(cluster_node: RedisServer) -> None:
    """On a Redis Cluster node all three keys hash to one slot (a hash tag), so the scripts
    that touch them all book and pause there."""
    raw = Redis.from_url(cluster_node.url)

    async def cluster_ok() -> bool:
        info = await command(raw, "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    try:
        await command(raw, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        await until(cluster_ok)
        slots = {await command(raw, "CLUSTER", "KEYSLOT", key) for key in (TAT, PAUSE, RATE)}
        async with await budget(cluster_node) as shared:
            first = await shared.reserve()
            await shared.pause(5)
            paused = await shared.reserve()
    finally:
        await raw.aclose()
    assert len(slots) == 1
    assert first == 0.0
    assert 4 < paused <= 5


async def restart_empty(server: RedisServer) -> None:
    """Stop the server and start it again on its port, without any of its data."""
    await anyio.to_thread.run_sync(server.stop)
    await anyio.to_thread.run_sync(server.start)


@pytest.mark.parametrize("down_when_paused", [False, True], ids=["restarted-empty", "down"])
async def test_a_running_pause_is_written_back_once_the_store_answers(
    redis_server: RedisServer, down_when_paused: bool
) -> None:
    """A pause running while Redis restarts empty, or set while Redis is down, is written back
    by keep_pause, so a process connecting afterwards waits for it."""
    async with await budget(redis_server) as first, anyio.create_task_group() as tg:
        tg.start_soon(first.keep_pause, 0.05)
        if down_when_paused:
            await anyio.to_thread.run_sync(redis_server.stop)
            await first.pause(30)
            await anyio.to_thread.run_sync(redis_server.start)
        else:
            await first.pause(30)
            await restart_empty(redis_server)
        raw = Redis.from_url(redis_server.url)
        try:

            async def paused() -> bool:
                return bool(await raw.exists(PAUSE))

            await until(paused)
        finally:
            await raw.aclose()
        async with await budget(redis_server) as late:
            wait = await late.reserve()
        tg.cancel_scope.cancel()
    assert 28 < wait <= 30


@pytest.mark.parametrize(
    ("key", "most_s", "cut_s"),
    [(TAT, 0.0, 10 * 3600), (PAUSE, 6 * 3600 + 1.0, 4 * 3600)],
    ids=["booking", "pause"],
)
async def test_a_time_hours_ahead_is_cut_back_and_logged(
    redis_server: RedisServer, key: str, most_s: float, cut_s: float
) -> None:
    """A booking or pause 10 h ahead (a stepped clock, a foreign value) is cut back, in the
    store too, and logged once: a booking is dropped, a pause cut to the longest one (6 h)."""
    raw = Redis.from_url(redis_server.url)
    seconds, micros = await raw.time()
    now_us = seconds * 1_000_000 + micros
    await raw.set(key, str(now_us + 10 * 3600 * 1_000_000))
    with capture_logs() as logs:
        try:
            async with await budget(redis_server) as shared:
                first = await shared.reserve()
                second = await shared.reserve()
            stored = int(await raw.get(key) or 0)
        finally:
            await raw.aclose()
    assert first <= most_s
    assert second <= most_s + 0.011  # one interval later: spaced as usual again
    assert stored <= now_us + (most_s + 5) * 1_000_000
    capped = [e for e in logs if e["event"] == "rate_store_wait_capped"]
    assert len(capped) == 1
    assert capped[0]["cut_s"] == pytest.approx(cut_s, abs=5)


async def test_processes_sharing_a_key_with_different_rates_are_told(
    redis_server: RedisServer,
) -> None:
    """A 40/s and a 1/s process on one key each log rate_store_rate_differs naming both
    rates, once; two at the same rate log nothing."""
    with capture_logs() as logs:
        fast, slow, same = [await budget(redis_server, rate=r) for r in (40.0, 1.0, 1.0)]
        try:
            for shared in (fast, slow, same, fast, slow, fast):
                await shared.reserve()
        finally:
            for shared in (fast, slow, same):
                await shared.aclose()
    differs = [
        (e["rate"], e["other_rate"]) for e in logs if e["event"] == "rate_store_rate_differs"
    ]
    assert sorted(differs) == [(1.0, 40.0), (40.0, 1.0)]


def test_rate_key_is_trimmed_where_it_is_parsed() -> None:
    """--rate-key " g4 " shares the budget of "g4"; one of only blanks is refused."""
    flags = {"rate_key": " g4 \t"}
    settings = load_settings(flags, {}, None, None, home=Path("/nonexistent"), require_key=False)
    assert settings.rate_key == "g4"
    with pytest.raises(ConfigError):
        load_settings({"rate_key": "  "}, {}, None, None, require_key=False)


async def test_a_run_whose_store_starts_refusing_ends_keeping_its_records(
    redis_server: RedisServer,
) -> None:
    """Redis refusing mid-run: no request goes out, the run raises RateStoreError after the
    limit, and every id the API had answered has its record."""
    ids = [f"refused-{i}" for i in range(300)]
    raw = Redis.from_url(redis_server.url)
    sink = ListSink()

    async def break_store(sim: Simulator) -> None:
        await sim.wait_until(lambda st: st.requests >= 20)
        await raw.set(PAUSE, "abc")

    async with running_simulator(SimSettings(api_key=API_KEY, min_polls=1, max_polls=1)) as sim:
        settings = replace(FAST, base_url=sim.url, rate=100.0, burst=1, concurrency=4)
        shared = await SharedBudget.connect(
            redis_server.url, key=KEY, rate=settings.rate, burst=1, log=structlog.get_logger(),
            refusal_limit_s=0.5,
        )  # fmt: skip
        try:
            async with shared, ApiClient(settings) as client:
                engine = Engine(
                    settings, client.poll, sink, log=structlog.get_logger(), budget=shared
                )
                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(break_store, sim)
                        with pytest.raises(RateStoreError, match=PAUSE):
                            await engine.run(items_of(ids))
        finally:
            await raw.aclose()
    answered = set(sim.stats.polls_by_id)
    written = [record.progress_id for record in sink.records]
    print(f"\n{len(answered)} ids answered, {len(written)} records written, of {len(ids)}")
    assert 20 <= len(answered) < len(ids)
    assert sim.stats.requests == len(answered)  # one poll each: none after the refusal
    assert sorted(written) == sorted(answered)
