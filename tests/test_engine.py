"""The engine end to end: real client, real simulator over loopback, counts taken server-side."""

from __future__ import annotations

import anyio
import pytest
from helpers import KEY, ListSink, by_id, poll
from structlog.testing import capture_logs

from batchpoll.errors import AuthRefused
from batchpoll.records import TERMINAL_STATUSES
from batchpoll.simulator import SimSettings, running_simulator, truth

pytestmark = pytest.mark.anyio


async def test_every_id_ends_as_the_simulator_says() -> None:
    """300 ids end in exactly one record each, with the status and poll count the API dictates."""
    sim_settings = SimSettings(seed=3, api_key=KEY)
    ids = [f"job-{i}" for i in range(300)]
    async with running_simulator(sim_settings) as sim:
        records, stats = await poll(ids, sim)
    got = by_id(records)
    assert set(got) == set(ids)
    for pid in ids:
        status, polls = truth(pid, sim_settings)
        assert (got[pid].status, got[pid].polls) == (status, polls), pid
    assert {r.status for r in records} == TERMINAL_STATUSES
    assert stats.done == 300
    assert sum(stats.by_status.values()) == 300


async def test_record_carries_api_values_and_poller_facts() -> None:
    """A completed record passes result through and adds polls, times and elapsed seconds."""
    sim_settings = SimSettings(seed=1, api_key=KEY, min_polls=3, max_polls=3)
    async with running_simulator(sim_settings) as sim:
        records, _ = await poll(["abc"], sim)
    (rec,) = records
    assert rec.polls == 3
    assert rec.first_poll_at is not None
    assert rec.last_poll_at is not None
    assert rec.first_poll_at <= rec.last_poll_at
    assert rec.elapsed_s is not None
    assert rec.elapsed_s >= 0
    assert rec.last_api_status == rec.status
    if rec.status == "completed":
        assert isinstance(rec.result, dict)


@pytest.mark.parametrize(
    "pid",
    ["a&b=c", "x/y?z#w", "100%", "plus+sign", "é-日本-🎉", "%2F-encoded", ";,:@$!'()*"],
    ids=["amp-eq", "slash-q-hash", "percent", "plus", "non-ascii", "pre-encoded", "sub-delims"],
)
async def test_special_characters_reach_the_server_intact(pid: str) -> None:
    """The server sees the exact id, whatever URL-special or non-ASCII characters it holds."""
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, _ = await poll([pid], sim)
    assert [r.progress_id for r in records] == [pid]
    assert set(sim.stats.polls_by_id) == {pid}


async def test_invalid_input_is_recorded_and_never_requested() -> None:
    """Invalid lines become invalid_input records and send no request."""
    lines = ["good-1", "has space", "x" * 257, '{"progress_id": 5}', "good-2"]
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, _ = await poll(lines, sim)
    statuses = {r.progress_id: r.status for r in records}
    assert sum(s == "invalid_input" for s in statuses.values()) == 3
    assert set(sim.stats.polls_by_id) == {"good-1", "good-2"}
    assert all(r.error for r in records if r.status == "invalid_input")


async def test_repeated_ids_are_polled_and_written_once() -> None:
    """A repeated id is polled as one id and written once."""
    sim_settings = SimSettings(api_key=KEY, min_polls=2, max_polls=2)
    async with running_simulator(sim_settings) as sim:
        records, _ = await poll(["dup", "other", "dup", "dup"], sim)
    assert sorted(r.progress_id for r in records) == ["dup", "other"]
    assert sim.stats.polls_by_id == {"dup": 2, "other": 2}


async def test_rate_limit_holds_at_the_server() -> None:
    """No one-second window at the server holds more than rate + burst requests."""
    async with running_simulator(SimSettings(api_key=KEY, min_polls=1, max_polls=2)) as sim:
        records, _ = await poll([f"r-{i}" for i in range(300)], sim, rate=200.0, burst=1)
    assert len(records) == 300
    # The contract's rate * t + burst, counted where requests arrive (the headroom's doing).
    assert sim.stats.max_in_window(1.0) <= 200 + 1
    # Unlimited, 16 workers on loopback send thousands a second, so the bound is the limiter's
    # doing; that it paces at the rate, not below it, is test_scheduler's to show on a fake clock.


async def test_burst_is_allowed_at_start_but_not_rate() -> None:
    """A fresh run sends at most `burst` requests back-to-back, not a whole second's worth."""
    async with running_simulator(SimSettings(api_key=KEY, min_polls=1, max_polls=1)) as sim:
        await poll([f"b-{i}" for i in range(30)], sim, rate=20.0, burst=5)
    # In the first 0.1 s: the burst of 5, plus at most 2 more at 20/s (one per 0.05 s).
    assert sim.stats.max_in_window(0.1) <= 5 + 2 + 1


async def test_concurrency_limit_holds_and_is_reached() -> None:
    """With slow answers, the server sees at most --concurrency requests at once, and reaches it."""
    sim_settings = SimSettings(api_key=KEY, latency=0.05, min_polls=1, max_polls=1)
    async with running_simulator(sim_settings) as sim:
        records, _ = await poll([f"c-{i}" for i in range(40)], sim, concurrency=5)
    assert len(records) == 40
    assert sim.stats.max_in_flight == 5


async def test_404_and_400_end_at_once_and_others_go_on() -> None:
    """404 ends as not_found and 400 as rejected (with the field messages) after one poll each."""
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, _ = await poll(["notfound-1", "reject-1", "fine-1"], sim)
    got = by_id(records)
    assert got["notfound-1"].status == "not_found"
    assert got["notfound-1"].polls == 1
    assert got["reject-1"].status == "rejected"
    assert got["reject-1"].error == "progress_id: Invalid progress id."
    assert got["fine-1"].status in TERMINAL_STATUSES


async def test_transient_failures_end_as_error_after_the_retry_limit() -> None:
    """An id that always gets 503 ends as error after max_retries attempts; others finish."""
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, stats = await poll(["flaky-1", "ok-1"], sim, max_retries=3)
    got = by_id(records)
    assert got["flaky-1"].status == "error"
    assert got["flaky-1"].error is not None
    assert "HTTP 503" in got["flaky-1"].error
    assert sim.stats.polls_by_id["flaky-1"] == 3
    assert got["ok-1"].status in TERMINAL_STATUSES
    assert stats.retries >= 2


async def test_a_fault_storm_loses_nothing_and_doubles_nothing() -> None:
    """Through 5xx, drops, truncated and unusable bodies and 429s of every form, every id ends
    once, with the status the simulator says."""
    sim_settings = SimSettings(
        seed=5,
        api_key=KEY,
        error_rate=0.15,
        drop_rate=0.05,
        truncate_rate=0.05,
        garbage_rate=0.05,
        throttle_rate=0.01,
        retry_after_forms=("0.05", "none"),
    )
    ids = [f"f-{i}" for i in range(300)] + ["weird-1", "hop-1", "notfound-1", "reject-1"]
    async with running_simulator(sim_settings) as sim:
        records, stats = await poll(ids, sim, max_retries=30)
    got = by_id(records)
    assert {pid: got[pid].status for pid in ids} == {
        pid: truth(pid, sim_settings)[0] for pid in ids
    }
    assert stats.retries > 0
    assert stats.throttled > 0
    assert set(sim.stats.faults) >= {"error", "drop", "truncate", "garbage", "throttle"}


async def test_a_body_stalled_past_the_request_timeout_is_retried() -> None:
    """A body that stalls past --request-timeout is a transient failure, then retried."""
    sim_settings = SimSettings(api_key=KEY, slow_rate=0.3, slow_body_s=2.0, min_polls=1)
    async with running_simulator(sim_settings) as sim:
        records, stats = await poll(
            [f"s-{i}" for i in range(20)], sim, request_timeout=0.2, max_retries=20
        )
    assert len(by_id(records)) == 20
    assert {r.status for r in records} <= TERMINAL_STATUSES
    assert stats.retries >= sim.stats.faults["slow"] > 0


async def test_oversized_and_non_object_bodies_end_as_error() -> None:
    """A body over 10 MiB is not read past the cap, and a JSON array is not an answer."""
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, _ = await poll(["huge-1", "list-1"], sim, max_retries=2)
    got = by_id(records)
    assert got["huge-1"].status == "error"
    assert got["huge-1"].error is not None
    assert "larger than" in got["huge-1"].error
    assert got["list-1"].status == "error"
    assert got["list-1"].error is not None
    assert "not an object" in got["list-1"].error


async def test_a_redirect_to_another_origin_never_receives_the_key() -> None:
    """A redirect to another port ends the id as error, and that origin sees no request."""
    async with running_simulator(SimSettings()) as other:
        sim_settings = SimSettings(api_key=KEY, redirect_url=other.url)
        async with running_simulator(sim_settings) as sim:
            records, _ = await poll(["redirect-1", "hop-1"], sim)
    got = by_id(records)
    assert got["redirect-1"].status == "error"
    assert got["redirect-1"].error is not None
    assert "another origin" in got["redirect-1"].error
    assert got["hop-1"].status in TERMINAL_STATUSES  # same-origin redirects are followed
    assert other.stats.requests == 0


async def test_a_key_revoked_mid_run_stops_with_auth_refused_after_writing_finished_ids() -> None:
    """401 after N requests: AuthRefused, and the ids that finished before it are written."""
    sink = ListSink()
    sim_settings = SimSettings(api_key=KEY, unauthorized_after=30, min_polls=1, max_polls=1)
    async with running_simulator(sim_settings) as sim:
        with pytest.raises(AuthRefused):
            await poll([f"k-{i}" for i in range(100)], sim, sink=sink, concurrency=4)
    assert 0 < len(sink.records) <= 30
    assert len(by_id(sink.records)) == len(sink.records)


async def test_per_id_timeout_ends_as_timed_out_with_last_api_status() -> None:
    """An id still in progress when its --timeout runs out is written as timed_out."""
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        records, _ = await poll(["slow-1", "quick-1"], sim, timeout=0.3)
    got = by_id(records)
    assert got["slow-1"].status == "timed_out"
    assert got["slow-1"].last_api_status == "in_progress"
    assert got["slow-1"].polls >= 2
    assert got["quick-1"].status in TERMINAL_STATUSES


async def test_deadline_gives_every_unfinished_id_one_timed_out_record() -> None:
    """At --deadline every id without a record, polled or not yet read, ends as timed_out."""
    ids = [f"d-{i}" for i in range(2000)]
    async with running_simulator(SimSettings(api_key=KEY, pending=True)) as sim:
        records, _ = await poll(ids, sim, deadline=0.5, rate=100.0, burst=1)
    got = by_id(records)
    assert set(got) == set(ids)
    assert {r.status for r in records} == {"timed_out"}
    polled = sum(1 for r in records if r.polls)
    assert 0 < polled < len(ids)  # some were polled, and most never got their turn
    assert len(sim.stats.polls_by_id) == polled


async def test_unknown_status_polls_on_and_warns_once() -> None:
    """An unknown status is not terminal: the id is polled on, with one warning per status."""
    sim_settings = SimSettings(api_key=KEY, min_polls=3, max_polls=3)
    with capture_logs() as logs:
        async with running_simulator(sim_settings) as sim:
            records, _ = await poll(["weird-1", "weird-2"], sim)
    assert {r.polls for r in records} == {3}
    assert all(r.status in TERMINAL_STATUSES for r in records)
    warnings = [e for e in logs if e["event"] == "unknown_status"]
    assert len(warnings) == 1
    assert warnings[0]["status"] == "queued"


async def test_retry_after_pauses_the_whole_run() -> None:
    """After a 429 with Retry-After: 1, the server sees no request for a second."""
    sim_settings = SimSettings(
        api_key=KEY, rate_limit=2.0, retry_after="1", min_polls=1, max_polls=1
    )
    async with running_simulator(sim_settings) as sim:
        records, stats = await poll([f"p-{i}" for i in range(4)], sim, concurrency=1)
    assert len(records) == 4
    assert {r.status for r in records} <= TERMINAL_STATUSES
    assert stats.throttled >= 1
    assert sim.stats.by_status[429] == stats.throttled
    for t in sim.stats.throttled_at:
        later = [a for a in sim.stats.arrivals if a > t]
        assert not later or min(later) - t >= 0.95


async def test_auth_refused_stops_the_run_with_one_error() -> None:
    """A 401 ends the run with a single AuthRefused naming the key's source, not the key."""
    sink = ListSink()
    async with running_simulator(SimSettings(api_key="another-key")) as sim:
        with pytest.raises(AuthRefused) as info:
            await poll(["a", "b", "c"], sim, sink=sink)
    error = info.value
    assert "env CEKURA_API_KEY" in str(error)
    assert KEY not in str(error)
    assert sink.records == []


async def test_heartbeat_reports_progress_while_the_run_goes_on() -> None:
    """The heartbeat logs done, total, statuses, requests in flight and the request rate."""
    sim_settings = SimSettings(api_key=KEY, min_polls=3, max_polls=3)
    with capture_logs() as logs:
        async with running_simulator(sim_settings) as sim:
            await poll([f"h-{i}" for i in range(20)], sim, rate=40.0, burst=1, heartbeat_s=0.2)
    beats = [e for e in logs if e["event"] == "heartbeat"]
    assert beats
    assert {"done", "total", "by_status", "in_flight", "request_rate"} <= set(beats[-1])
    assert beats[-1]["total"] == 20
    assert 0 < beats[-1]["request_rate"] <= 40 + 1


async def test_429_without_retry_after_lowers_the_rate_and_every_id_still_ends() -> None:
    """429s without Retry-After halve the effective rate; every id still ends as the API says."""
    sim_settings = SimSettings(
        api_key=KEY, rate_limit=50.0, rate_burst=5, retry_after=None, min_polls=1, max_polls=1
    )
    ids = [f"t-{i}" for i in range(150)]
    async with running_simulator(sim_settings) as sim:
        records, stats = await poll(ids, sim, rate=200.0, burst=1, max_retries=50)
    assert {r.progress_id for r in records} == set(ids)
    assert {r.status for r in records} <= TERMINAL_STATUSES
    assert stats.throttled == sim.stats.by_status[429] > 0
    assert stats.lowest_rate is not None
    assert stats.lowest_rate <= 100.0
    assert stats.paused_s == 0


async def test_a_pause_longer_than_the_deadline_ends_the_run_at_once() -> None:
    """A Retry-After past --deadline writes every unfinished id as timed_out without waiting."""
    sim_settings = SimSettings(api_key=KEY, rate_limit=1.0, retry_after="3600", pending=True)
    ids = [f"z-{i}" for i in range(20)]
    with anyio.fail_after(10):  # a guard: sleeping until the deadline would take 600 s
        async with running_simulator(sim_settings) as sim:
            records, stats = await poll(ids, sim, deadline=600.0, concurrency=1, burst=1)
    assert {r.progress_id for r in records} == set(ids)
    assert {r.status for r in records} == {"timed_out"}
    assert sim.stats.by_status[429] == 1
    assert stats.throttled == 1


async def test_a_server_inventing_statuses_gets_a_bounded_number_logged() -> None:
    """A new unknown status on every answer: each of the first MAX_UNKNOWN_STATUSES is logged
    once, then one line says no more are; every id still ends."""
    from dataclasses import replace

    import orjson
    import structlog
    from aiohttp import web
    from helpers import FAST, items_of

    from batchpoll._core.scheduler import MAX_UNKNOWN_STATUSES
    from batchpoll._io.client import ApiClient
    from batchpoll._io.engine import Engine

    answered: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        pid = request.query["progress_id"]
        answered[pid] = answered.get(pid, 0) + 1
        status = f"invented-{pid}" if answered[pid] == 1 else "completed"
        return web.Response(body=orjson.dumps({"status": status}), content_type="application/json")

    app = web.Application()
    app.router.add_get(FAST.path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = replace(FAST, base_url=f"http://127.0.0.1:{port}")
    sink = ListSink()
    try:
        with capture_logs() as logs:
            async with ApiClient(settings) as client:
                engine = Engine(settings, client.poll, sink, log=structlog.get_logger())
                with anyio.fail_after(30):
                    await engine.run(items_of(f"s{i}" for i in range(MAX_UNKNOWN_STATUSES + 50)))
    finally:
        await runner.cleanup()
    events = [entry["event"] for entry in logs]
    assert events.count("unknown_status") == MAX_UNKNOWN_STATUSES
    assert events.count("unknown_statuses_not_logged") == 1
    assert {r.status for r in sink.records} == {"completed"}
    assert len(sink.records) == MAX_UNKNOWN_STATUSES + 50
