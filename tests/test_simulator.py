"""The fake Cekura API, exercised over loopback with a real aiohttp client."""

from __future__ import annotations

import argparse
import email.utils
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from itertools import count
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from helpers import rate_between

from batchpoll.simulator import (
    NEVER,
    SDK_PATH,
    SimSettings,
    SimStats,
    Simulator,
    add_knobs,
    running_simulator,
    serve,
    settings_from_args,
    truth,
)

pytestmark = pytest.mark.anyio

TERMINAL = {
    "completed",
    "failed",
    "cancelled",
    "needs_clarification",
    "needs_agent_clarification",
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def get(
    session: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """One GET: (status, decoded JSON body, headers)."""
    async with session.get(url, params=params, headers=headers) as response:
        return response.status, orjson.loads(await response.read()), response.headers


async def poll(session: aiohttp.ClientSession, sim: Simulator, pid: str) -> tuple[int, Any]:
    status, body, _ = await get(session, sim.endpoint, {"progress_id": pid})
    return status, body


def id_taking(polls: int, settings: SimSettings, prefix: str = "job-") -> str:
    """The first ``{prefix}{n}`` id that ends after exactly *polls* polls."""
    return next(f"{prefix}{n}" for n in count() if truth(f"{prefix}{n}", settings)[1] == polls)


async def test_id_is_in_progress_until_its_kth_poll_then_its_truth(
    session: aiohttp.ClientSession,
) -> None:
    """An id answers in_progress for k-1 polls, then (and from then on) its truth() status."""
    settings = SimSettings(seed=3, min_polls=2, max_polls=5)
    pid = id_taking(4, settings)
    async with running_simulator(settings) as sim:
        answers = [await poll(session, sim, pid) for _ in range(5)]
    assert [status for status, _ in answers] == [200] * 5
    assert [body["status"] for _, body in answers] == ["in_progress"] * 3 + [
        truth(pid, settings)[0]
    ] * 2
    assert answers[0][1]["result"] is None
    assert answers[0][1]["progress_id"] == pid
    assert sim.stats.polls_by_id == {pid: 5}


@pytest.mark.parametrize(
    ("params", "status", "body"),
    [
        ({"progress_id": "notfound-1"}, 404, {"detail": "Not found."}),
        ({"progress_id": "reject-1"}, 400, {"progress_id": ["Invalid progress id."]}),
        ({"progress_id": "flaky-1"}, 503, {"detail": "Service temporarily unavailable."}),
        ({}, 400, {"progress_id": ["This field is required."]}),
        ({"progress_id": ""}, 400, {"progress_id": ["This field may not be blank."]}),
    ],
    ids=["notfound", "reject", "flaky", "missing", "blank"],
)
async def test_error_forms_answer_as_documented(
    session: aiohttp.ClientSession, params: dict[str, str], status: int, body: Any
) -> None:
    """Each documented error form gets its status and body every time, with no Retry-After."""
    async with running_simulator() as sim:
        for _ in range(3):
            got_status, got_body, headers = await get(session, sim.endpoint, params)
            assert (got_status, got_body) == (status, body)
            assert "Retry-After" not in headers
            assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("pid", "settings", "expected"),
    [
        ("notfound-x", SimSettings(), ("not_found", 1)),
        ("reject-x", SimSettings(), ("rejected", 1)),
        ("flaky-x", SimSettings(), ("error", NEVER)),
        ("slow-x", SimSettings(), ("in_progress", NEVER)),
        ("plain-x", SimSettings(pending=True), ("in_progress", NEVER)),
        ("huge-x", SimSettings(), ("error", NEVER)),
        ("list-x", SimSettings(), ("error", NEVER)),
        ("redirect-x", SimSettings(), ("rejected", 1)),
        ("redirect-x", SimSettings(redirect_url="http://127.0.0.1:1"), ("error", NEVER)),
    ],
    ids=[
        "notfound",
        "reject",
        "flaky",
        "slow",
        "pending",
        "huge",
        "list",
        "redirect-unset",
        "redirect-set",
    ],
)
def test_truth_reports_each_documented_form(
    pid: str, settings: SimSettings, expected: tuple[str, int]
) -> None:
    """truth() names the documented outcome of each special id form."""
    assert truth(pid, settings) == expected


async def test_weird_ids_answer_an_unknown_status_until_terminal(
    session: aiohttp.ClientSession,
) -> None:
    """A weird- id answers "queued" for k-1 polls, then its truth() terminal status."""
    settings = SimSettings(min_polls=3, max_polls=3)
    status, polls = truth("weird-1", settings)
    assert (status in TERMINAL, polls) == (True, 3)
    async with running_simulator(settings) as sim:
        seen = [(await poll(session, sim, "weird-1"))[1]["status"] for _ in range(3)]
    assert seen == ["queued", "queued", status]


@pytest.mark.parametrize(
    ("pid", "settings"),
    [("slow-1", SimSettings()), ("job-1", SimSettings(pending=True))],
    ids=["slow", "pending"],
)
async def test_never_ending_ids_stay_in_progress(
    session: aiohttp.ClientSession, pid: str, settings: SimSettings
) -> None:
    """slow- ids, and every id under pending, answer in_progress past max_polls."""
    async with running_simulator(settings) as sim:
        seen = {(await poll(session, sim, pid))[1]["status"] for _ in range(settings.max_polls + 2)}
    assert seen == {"in_progress"}


@pytest.mark.parametrize(
    "pid",
    ["a&b=c", "x/y?z#w", "100%", "1+1 = 2", "é", "日本", "🦄-id", "%41", "a;b,c"],
)
async def test_special_character_ids_round_trip(session: aiohttp.ClientSession, pid: str) -> None:
    """An id sent through params= comes back, and is counted, exactly as sent."""
    async with running_simulator() as sim:
        status, body = await poll(session, sim, pid)
    assert (status, body["progress_id"]) == (200, pid)
    assert sim.stats.polls_by_id == {pid: 1}


@pytest.mark.parametrize("headers", [{"X-CEKURA-API-KEY": "wrong"}, {}], ids=["wrong", "missing"])
async def test_a_bad_key_gets_401_and_is_no_poll(
    session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """A wrong or missing key gets 401; it counts as a request but not as a poll of the id."""
    async with running_simulator(SimSettings(api_key="sekret")) as sim:
        status, body, _ = await get(session, sim.endpoint, {"progress_id": "job-1"}, headers)
    assert (status, sorted(body)) == (401, ["detail"])
    assert "sekret" not in orjson.dumps(body).decode()
    assert (sim.stats.requests, sim.stats.by_status, sim.stats.polls_by_id) == (1, {401: 1}, {})


async def test_the_right_key_gets_200(session: aiohttp.ClientSession) -> None:
    """The configured key in X-CEKURA-API-KEY is answered normally."""
    async with running_simulator(SimSettings(api_key="sekret")) as sim:
        status, _, _ = await get(
            session, sim.endpoint, {"progress_id": "job-1"}, {"X-CEKURA-API-KEY": "sekret"}
        )
    assert status == 200
    assert sim.stats.polls_by_id == {"job-1": 1}


async def test_error_rate_one_answers_every_request_with_5xx(
    session: aiohttp.ClientSession,
) -> None:
    """With error_rate=1 every request gets 500/502/503 without Retry-After, and no id advances."""
    async with running_simulator(SimSettings(error_rate=1.0)) as sim:
        answers = [await get(session, sim.endpoint, {"progress_id": "job-1"}) for _ in range(30)]
    assert {status for status, _, _ in answers} <= {500, 502, 503}
    assert not any("Retry-After" in headers for _, _, headers in answers)
    assert sim.stats.polls_by_id == {}
    assert sum(sim.stats.by_status.values()) == sim.stats.requests == 30


async def test_faults_do_not_change_an_ids_fate(session: aiohttp.ClientSession) -> None:
    """Under error_rate the id still needs exactly k 200 answers and ends as truth() says."""
    # Faults are drawn from Random(seed).random(), whose sequence Python keeps stable: seed 1
    # interleaves 7 faults with these 5 answers.
    settings = SimSettings(seed=1, error_rate=0.5, min_polls=4, max_polls=4)
    pid = id_taking(4, settings)
    async with running_simulator(settings) as sim:
        ok: list[str] = []
        while len(ok) < 5:
            status, body = await poll(session, sim, pid)
            if status == 200:
                ok.append(body["status"])
    assert ok == ["in_progress"] * 3 + [truth(pid, settings)[0]] * 2
    assert sim.stats.polls_by_id == {pid: 5}
    assert sim.stats.requests - sim.stats.by_status[200] > 0  # faults were actually injected


@pytest.mark.parametrize(
    ("retry_after", "settings"),
    [
        ("1", SimSettings(retry_after="1")),
        ("7", SimSettings(retry_after="7")),
        (None, SimSettings(retry_after=None)),
        ("0.5", SimSettings(retry_after_forms=("0.5",))),
        (None, SimSettings(retry_after="9", retry_after_forms=("none",))),
    ],
    ids=["1", "7", "None", "forms-0.5", "forms-none"],
)
async def test_rate_limit_answers_429_with_retry_after(
    session: aiohttp.ClientSession, retry_after: str | None, settings: SimSettings
) -> None:
    """Above rate_limit the server answers 429 with the configured Retry-After (or none)."""
    # One request per 1000 s: the second is over the limit however slow the machine is.
    settings = replace(settings, rate_limit=0.001)
    async with running_simulator(settings) as sim:
        answers = [await get(session, sim.endpoint, {"progress_id": "job-1"}) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 429, 429]
    assert [headers.get("Retry-After") for _, _, headers in answers[1:]] == [retry_after] * 2
    assert sim.stats.polls_by_id == {"job-1": 1}


async def test_rate_burst_admits_that_many_back_to_back(session: aiohttp.ClientSession) -> None:
    """rate_burst requests are admitted at once; the next one is throttled."""
    async with running_simulator(SimSettings(rate_limit=0.001, rate_burst=3)) as sim:
        statuses = [(await poll(session, sim, "job-1"))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_max_in_flight_counts_requests_sleeping_in_latency(
    session: aiohttp.ClientSession,
) -> None:
    """N concurrent requests held by latency make max_in_flight N; hanging up frees them."""
    n = 12
    async with running_simulator(SimSettings(latency=60.0)) as sim:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(poll, session, sim, f"job-{i}")
            await sim.wait_until(lambda stats: stats.in_flight == n)
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await sim.wait_until(lambda stats: stats.in_flight == 0)
    assert sim.stats.max_in_flight == n
    assert sim.stats.polls_by_id == {}  # none got past the latency


@pytest.mark.parametrize(
    ("arrivals", "window", "expected"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 1.0, 1.5, 2.0], 1.0, 3),  # closed window: [0, 1] holds 0, 0.5 and 1
        ([0.0, 0.5, 1.0, 1.5, 2.0], 0.4, 1),
        ([2.0, 0.0, 0.1, 1.95, 2.05, 0.2], 0.25, 3),  # unsorted input
        ([0.0, 0.0, 0.0, 10.0], 1.0, 3),
    ],
)
def test_max_in_window_is_the_busiest_sliding_window(
    arrivals: list[float], window: float, expected: int
) -> None:
    """max_in_window counts the most arrivals in any closed window of the given length."""
    assert SimStats(arrivals=arrivals).max_in_window(window) == expected


def test_rate_between_counts_arrivals_per_second() -> None:
    """rate_between divides the arrivals in [start, end] by the span's length."""
    arrivals = [0.0, 1.0, 1.5, 2.0, 9.0]
    assert rate_between(arrivals, 1.0, 3.0) == 1.5
    with pytest.raises(ValueError, match="after"):
        rate_between(arrivals, 3.0, 3.0)


def test_truth_distribution_is_plausible() -> None:
    """Over 2000 ids every terminal status and every k appear, and completed is the majority."""
    settings = SimSettings(seed=11, min_polls=2, max_polls=6)
    fates = [truth(f"id-{n}", settings) for n in range(2000)]
    statuses = Counter(status for status, _ in fates)
    assert set(statuses) == TERMINAL
    assert statuses["completed"] > 1000
    assert {polls for _, polls in fates} == {2, 3, 4, 5, 6}


def test_truth_depends_on_the_seed() -> None:
    """Another seed deals other fates to the same ids."""
    ids = [f"id-{n}" for n in range(50)]
    a, b = SimSettings(seed=1), SimSettings(seed=2)
    assert [truth(i, a) for i in ids] != [truth(i, b) for i in ids]


async def test_same_seed_gives_byte_identical_answers(session: aiohttp.ClientSession) -> None:
    """Two servers with the same seed answer the same polls with the same bytes."""
    settings = SimSettings(seed=42)
    ids = [f"job-{n}" for n in range(20)]
    bodies: list[list[bytes]] = []
    for _ in range(2):
        async with running_simulator(settings) as sim:
            run = []
            for pid in ids * settings.max_polls:
                async with session.get(sim.endpoint, params={"progress_id": pid}) as response:
                    run.append(await response.read())
            bodies.append(run)
    assert bodies[0] == bodies[1]
    assert {orjson.loads(body)["status"] for body in bodies[0][-len(ids) :]} <= TERMINAL


@pytest.mark.parametrize("path", [SDK_PATH, SDK_PATH + "/"], ids=["sdk", "sdk-slash"])
async def test_the_sdk_path_answers_too(session: aiohttp.ClientSession, path: str) -> None:
    """The SDK's scenarios-external path answers like the default path and shares the counts."""
    settings = SimSettings(min_polls=1, max_polls=1)
    async with running_simulator(settings) as sim:
        status, body, _ = await get(session, sim.url + path, {"progress_id": "job-1"})
        again = await poll(session, sim, "job-1")
    assert (status, body["status"]) == (200, truth("job-1", settings)[0])
    assert again[1] == body
    assert sim.stats.polls_by_id == {"job-1": 2}


async def test_a_non_loopback_host_is_refused() -> None:
    """Both running_simulator and serve refuse to bind anything but loopback."""
    with pytest.raises(ValueError, match="loopback"):
        async with running_simulator(host="0.0.0.0"):
            pass
    with pytest.raises(ValueError, match="loopback"):
        serve(SimSettings(), host="example.com")


def test_settings_are_validated() -> None:
    """Impossible settings fail at construction."""
    with pytest.raises(ValueError, match="min_polls"):
        SimSettings(min_polls=3, max_polls=2)
    with pytest.raises(ValueError, match="rate_limit"):
        SimSettings(rate_limit=0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"drop_rate": 1.5}, "drop_rate"),
        ({"slow_rate": -0.1}, "slow_rate"),
        ({"garbage_rate": float("nan")}, "garbage_rate"),
        ({"error_rate": 0.6, "throttle_rate": 0.5}, "add up"),
        ({"slow_body_s": -1.0}, "slow_body_s"),
        ({"retry_after_forms": ()}, "forms"),
        ({"retry_after_forms": ("1", "soon")}, "forms"),
        ({"retry_after_forms": ("-1",)}, "forms"),
        ({"retry_after": "tomorrow"}, "forms"),
        ({"unauthorized_after": -1}, "unauthorized_after"),
        ({"redirect_url": "https://127.0.0.1:9"}, "redirect_url"),
        ({"redirect_url": "http://example.com"}, "redirect_url"),
        ({"redirect_url": "http://10.0.0.1:80"}, "redirect_url"),
        ({"redirect_url": "http://127.0.0.1:99999"}, "redirect_url"),
        ({"redirect_url": "127.0.0.1:8080"}, "redirect_url"),
    ],
)
def test_fault_settings_are_validated(fields: dict[str, Any], match: str) -> None:
    """Out-of-range fault rates, a fault mix above 1, bad forms and non-loopback URLs fail."""
    with pytest.raises(ValueError, match=match):
        SimSettings(**fields)


def test_fault_rates_summing_to_one_are_accepted_despite_float_rounding() -> None:
    """Rates that add up to 1 are fine even when their float sum lands just above it."""
    assert 0.2 + 0.4 + 0.3 + 0.1 > 1  # the order fault_rates adds them in
    SimSettings(
        error_rate=0.2,
        drop_rate=0.4,
        truncate_rate=0.3,
        slow_rate=0.1,
        retry_after_forms=("1", "0.5", "date", "none"),
        redirect_url="http://[::1]:8080/",
    )


async def test_serve_announces_its_url_and_stops_on_sigint(session: aiohttp.ClientSession) -> None:
    """serve() prints where it listens, answers there, and returns on SIGINT."""
    script = "from batchpoll.simulator import *; serve(SimSettings(), port=0)"
    with anyio.fail_after(20):
        async with await anyio.open_process([sys.executable, "-c", script]) as process:
            assert process.stderr is not None
            banner = b""
            while not banner.endswith(b"\n"):
                banner += await process.stderr.receive(1)
            prefix, _, url = banner.decode().strip().rpartition(" ")
            assert prefix == "simulator listening on"
            assert url.startswith("http://127.0.0.1:")
            status, _, _ = await get(
                session, url + SimSettings().path, {"progress_id": "notfound-1"}
            )
            process.send_signal(signal.SIGINT)
            assert (status, await process.wait()) == (404, 0)


async def test_stats_endpoint_reports_server_side_counts() -> None:
    """GET /__simulator/stats reports what the server counted, as JSON."""
    from batchpoll.simulator import STATS_PATH

    async with running_simulator(SimSettings()) as sim, aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.get(sim.endpoint, params={"progress_id": f"s-{i}"}) as resp:
                assert resp.status == 200
        async with session.get(sim.url + STATS_PATH) as resp:
            stats = await resp.json()
    assert stats["requests"] == 3
    assert stats["ids_polled"] == 3
    assert stats["by_status"] == {"200": 3}
    assert stats["max_in_1s_window"] == 3
    assert stats["faults"] == {}


def server_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and errors logged while the test ran (aiohttp's tracebacks among them)."""
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


async def test_drop_closes_the_connection_without_a_response(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_rate=1 aborts each connection: the client sees a disconnect, the server logs nothing."""
    async with running_simulator(SimSettings(drop_rate=1.0)) as sim:
        for _ in range(3):
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                await poll(session, sim, "job-1")
        with anyio.fail_after(5):
            await sim.wait_until(lambda stats: stats.in_flight == 0)
    # aiohttp's client resends an idempotent request once on a fresh connection, so the server
    # sees 3 to 6 requests: each one dropped, none answered, none a poll.
    assert 3 <= sim.stats.requests <= 6
    assert sim.stats.faults == {"drop": sim.stats.requests}
    assert (sim.stats.by_status, sim.stats.polls_by_id) == ({}, {})
    assert server_complaints(caplog) == []


async def test_truncate_sends_less_than_its_content_length(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """truncate_rate=1 answers 200 but closes short of Content-Length: a ClientPayloadError."""
    async with running_simulator(SimSettings(truncate_rate=1.0)) as sim:
        for _ in range(2):
            async with session.get(sim.endpoint, params={"progress_id": "job-1"}) as response:
                assert response.status == 200
                assert int(response.headers["Content-Length"]) > 0
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    assert sim.stats.faults == {"truncate": 2}
    assert (sim.stats.by_status, sim.stats.polls_by_id) == ({200: 2}, {})
    assert server_complaints(caplog) == []


async def test_slow_body_outlasts_a_read_timeout_and_hanging_up_ends_it() -> None:
    """A slow body trips a 0.2 s sock_read timeout, and the client hanging up ends the handler."""
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with (
        running_simulator(SimSettings(slow_rate=1.0, slow_body_s=60.0)) as sim,
        aiohttp.ClientSession(timeout=timeout) as impatient,
    ):
        async with impatient.get(sim.endpoint, params={"progress_id": "job-1"}) as response:
            assert response.status == 200
            with pytest.raises(TimeoutError):
                await response.read()
        # Far less than slow_body_s: only handler cancellation can end the request this soon.
        with anyio.fail_after(5):
            await sim.wait_until(lambda stats: stats.in_flight == 0)
    assert sim.stats.faults == {"slow": 1}
    assert sim.stats.polls_by_id == {}


async def test_a_patient_client_gets_the_slow_body_and_it_is_no_poll(
    session: aiohttp.ClientSession,
) -> None:
    """After the stall the rest arrives: the id as it stands (in_progress), and it is no poll."""
    async with running_simulator(SimSettings(slow_rate=1.0, slow_body_s=0.01)) as sim:
        status, body = await poll(session, sim, "job-1")
    assert (status, body["progress_id"], body["status"]) == (200, "job-1", "in_progress")
    assert (sim.stats.faults, sim.stats.polls_by_id) == ({"slow": 1}, {})


async def test_garbage_rotates_through_three_unusable_bodies(
    session: aiohttp.ClientSession,
) -> None:
    """garbage_rate=1 answers 200 with HTML, a JSON array and a text/plain object, in turn."""
    async with running_simulator(SimSettings(garbage_rate=1.0)) as sim:
        seen = []
        for _ in range(6):
            async with session.get(sim.endpoint, params={"progress_id": "job-1"}) as response:
                assert response.status == 200
                seen.append((response.content_type, await response.read()))
    shapes = [
        (kind, body if kind != "text/plain" else orjson.loads(body)["progress_id"])
        for kind, body in seen
    ]
    assert shapes[:3] == [
        ("text/html", b"<html>oops</html>"),
        ("application/json", b"[1,2]"),
        ("text/plain", "job-1"),
    ]
    assert shapes[3:] == shapes[:3]
    assert (sim.stats.faults, sim.stats.polls_by_id) == ({"garbage": 6}, {})


@pytest.mark.parametrize("form", ["1", "0.5", "date", "none"])
async def test_throttle_answers_429_with_each_retry_after_form(
    session: aiohttp.ClientSession, form: str
) -> None:
    """throttle_rate=1 answers 429 with the form's Retry-After: seconds, an HTTP-date, or none."""
    settings = SimSettings(throttle_rate=1.0, retry_after_forms=(form,))
    async with running_simulator(settings) as sim:
        status, body, headers = await get(session, sim.endpoint, {"progress_id": "job-1"})
        answered = datetime.now(UTC)
    assert (status, body) == (429, {"detail": "Request was throttled."})
    value = headers.get("Retry-After")
    if form == "none":
        assert value is None
    elif form == "date":
        assert value is not None
        assert value.endswith(" GMT")
        assert email.utils.parsedate_to_datetime(value) > answered
    else:
        assert value == form
    assert len(sim.stats.throttled_at) == 1
    assert (sim.stats.faults, sim.stats.polls_by_id) == ({"throttle": 1}, {})


async def test_throttle_picks_among_several_forms(session: aiohttp.ClientSession) -> None:
    """With several forms configured, 429s carry each of them over enough requests."""
    settings = SimSettings(throttle_rate=1.0, retry_after_forms=("1", "date", "none"))
    async with running_simulator(settings) as sim:
        answers = [await get(session, sim.endpoint, {"progress_id": "job-1"}) for _ in range(40)]
    kinds = {
        "none" if value is None else "date" if value.endswith("GMT") else value
        for value in (headers.get("Retry-After") for _, _, headers in answers)
    }
    assert kinds == {"1", "date", "none"}
    assert {status for status, _, _ in answers} == {429}


async def test_unauthorized_after_revokes_the_key_mid_run(session: aiohttp.ClientSession) -> None:
    """After unauthorized_after requests every request gets 401, even with the right key."""
    settings = SimSettings(api_key="sekret", unauthorized_after=3)
    key = {"X-CEKURA-API-KEY": "sekret"}
    async with running_simulator(settings) as sim:
        answers = [
            await get(session, sim.endpoint, {"progress_id": "job-1"}, key) for _ in range(5)
        ]
    assert [status for status, _, _ in answers] == [200, 200, 200, 401, 401]
    assert answers[-1][1] == {"detail": "Invalid API key."}
    assert sim.stats.polls_by_id == {"job-1": 3}


async def test_redirect_ids_go_to_the_other_origin(session: aiohttp.ClientSession) -> None:
    """A redirect- id gets a 302 to redirect_url with its path and id; it is a poll only there."""
    pid = "redirect-a b+c"
    async with running_simulator() as there:
        settings = SimSettings(redirect_url=there.url + "/")
        async with running_simulator(settings) as here:
            async with session.get(
                here.endpoint, params={"progress_id": pid}, allow_redirects=False
            ) as response:
                location = response.headers["Location"]
                assert response.status == 302
            status, _ = await poll(session, here, pid)  # following it
    assert location == f"{there.endpoint}?progress_id=redirect-a%20b%2Bc"
    assert status == 400  # there has no redirect_url, so it rejects redirect- ids
    assert truth(pid, settings) == ("error", NEVER)
    assert (here.stats.polls_by_id, there.stats.polls_by_id) == ({}, {pid: 1})
    assert here.stats.by_status == {302: 2}


async def test_redirect_ids_are_rejected_without_a_redirect_url(
    session: aiohttp.ClientSession,
) -> None:
    """With no redirect_url a redirect- id answers 400 like a reject- id, as truth() says."""
    async with running_simulator() as sim:
        status, body = await poll(session, sim, "redirect-1")
    assert (status, body) == (400, {"progress_id": ["Invalid progress id."]})
    assert truth("redirect-1", sim.settings) == ("rejected", 1)


async def test_hop_ids_redirect_to_the_sdk_path_and_count_there(
    session: aiohttp.ClientSession,
) -> None:
    """A hop- id gets a same-origin 302 to SDK_PATH, where its poll is answered and counted."""
    settings = SimSettings(min_polls=1, max_polls=1)
    async with running_simulator(settings) as sim:
        async with session.get(
            sim.endpoint, params={"progress_id": "hop-1"}, allow_redirects=False
        ) as response:
            assert (response.status, response.headers["Location"]) == (
                302,
                f"{SDK_PATH}?progress_id=hop-1",
            )
        async with session.get(sim.endpoint, params={"progress_id": "hop-1"}) as response:
            body = await response.json()
            assert [r.status for r in response.history] == [302]
    assert body["status"] == truth("hop-1", settings)[0] in TERMINAL
    assert sim.stats.polls_by_id == {"hop-1": 1}


async def test_huge_ids_answer_a_body_above_10_mib(session: aiohttp.ClientSession) -> None:
    """A huge- id answers a 200 JSON object of more than 10 MiB, on every poll."""
    async with running_simulator() as sim:
        for _ in range(2):
            async with session.get(sim.endpoint, params={"progress_id": "huge-1"}) as response:
                raw = await response.read()
                assert response.status == 200
            assert len(raw) > 10 * 2**20
            assert orjson.loads(raw)["progress_id"] == "huge-1"
    assert sim.stats.polls_by_id == {"huge-1": 2}


async def test_list_ids_answer_an_empty_json_array(session: aiohttp.ClientSession) -> None:
    """A list- id answers 200 with the JSON body [] on every poll."""
    async with running_simulator() as sim:
        answers = [await poll(session, sim, "list-1") for _ in range(3)]
    assert answers == [(200, [])] * 3
    assert sim.stats.polls_by_id == {"list-1": 3}


async def test_stats_endpoint_reports_faults_by_kind(session: aiohttp.ClientSession) -> None:
    """GET /__simulator/stats counts injected faults by kind."""
    from batchpoll.simulator import STATS_PATH

    async with running_simulator(SimSettings(throttle_rate=1.0)) as sim:
        for _ in range(2):
            await poll(session, sim, "job-1")
        async with session.get(sim.url + STATS_PATH) as response:
            stats = await response.json()
    assert (stats["faults"], stats["by_status"]) == ({"throttle": 2}, {"429": 2})


async def final_answer(session: aiohttp.ClientSession, sim: Simulator, pid: str) -> str:
    """Poll *pid* until it ends, retrying every failure at once; return its final status."""
    for _ in range(500):
        try:
            async with session.get(sim.endpoint, params={"progress_id": pid}) as response:
                raw = await response.read()
                status, kind = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError):
            continue
        if status == 404:
            return "not_found"
        if status == 400:
            return "rejected"
        if status != 200 or kind != "application/json":
            continue
        body = orjson.loads(raw)
        if isinstance(body, dict) and body["status"] in TERMINAL:
            return str(body["status"])
    raise AssertionError(f"{pid} did not end in 500 attempts")


async def test_a_fault_storm_changes_no_ids_fate() -> None:
    """Under every fault at 5%, each id still ends as truth() says after exactly k counted polls."""
    settings = SimSettings(
        seed=9,
        error_rate=0.05,
        drop_rate=0.05,
        truncate_rate=0.05,
        slow_rate=0.05,
        slow_body_s=0.02,
        garbage_rate=0.05,
        throttle_rate=0.05,
        retry_after_forms=("1", "date", "none"),
    )
    prefixes = ["job-", "job-", "job-", "weird-", "hop-", "notfound-", "reject-"]
    ids = [f"{prefixes[n % len(prefixes)]}{n}" for n in range(300)]
    finals: dict[str, str] = {}
    # No read timeout: one that fired on a real answer under load would lose a counted poll.
    # Slow bodies arrive whole after slow_body_s instead, as the id's unchanged state.
    async with running_simulator(settings) as sim, aiohttp.ClientSession() as s:

        async def worker(mine: list[str]) -> None:
            for pid in mine:
                finals[pid] = await final_answer(s, sim, pid)

        async with anyio.create_task_group() as tg:  # 20 workers share the ids
            for w in range(20):
                tg.start_soon(worker, ids[w::20])
    assert finals == {pid: truth(pid, settings)[0] for pid in ids}
    assert sim.stats.polls_by_id == {pid: truth(pid, settings)[1] for pid in ids}
    assert set(sim.stats.faults) == {"error", "drop", "truncate", "slow", "garbage", "throttle"}


def test_cli_knobs_map_onto_settings() -> None:
    """Every fault flag lands in its SimSettings field; --retry-after takes a comma list."""
    parser = argparse.ArgumentParser()
    add_knobs(parser)
    args = parser.parse_args(
        [
            "--drop-rate=0.1",
            "--truncate-rate=0.1",
            "--slow-rate=0.1",
            "--slow-body-s=2",
            "--garbage-rate=0.1",
            "--throttle-rate=0.1",
            "--error-rate=0.1",
            "--retry-after=1,date,none",
            "--unauthorized-after=50",
            "--redirect-url=http://127.0.0.1:9000",
        ]
    )
    assert settings_from_args(args) == SimSettings(
        drop_rate=0.1,
        truncate_rate=0.1,
        slow_rate=0.1,
        slow_body_s=2.0,
        garbage_rate=0.1,
        throttle_rate=0.1,
        error_rate=0.1,
        retry_after_forms=("1", "date", "none"),
        unauthorized_after=50,
        redirect_url="http://127.0.0.1:9000",
    )
    defaults = settings_from_args(parser.parse_args([]))
    assert defaults == SimSettings(retry_after_forms=("1",))
    assert settings_from_args(parser.parse_args(["--no-retry-after"])).retry_after_forms == (
        "none",
    )


@pytest.mark.parametrize(
    "argv",
    [["--redirect-url=http://example.com"], ["--retry-after=1,,date"], ["--drop-rate=2"]],
    ids=["remote-redirect", "empty-form", "rate-above-1"],
)
def test_cli_knobs_refuse_values_that_cannot_work(argv: list[str]) -> None:
    """settings_from_args raises ValueError for a remote redirect URL, empty form or bad rate."""
    parser = argparse.ArgumentParser()
    add_knobs(parser)
    with pytest.raises(ValueError, match=r"redirect_url|forms|drop_rate"):
        settings_from_args(parser.parse_args(argv))
