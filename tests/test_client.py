"""The HTTP boundary: answers classified purely, and the client's redirect rules over loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import helpers
import pytest
from aiohttp import web
from helpers import FAST, KEY
from raw_server import raw_server, response

from batchpoll._io.client import MAX_BODY, ApiClient, classify, field_messages
from batchpoll.errors import AuthRefused
from batchpoll.records import Answer, Broken, NotFound, Rejected, Throttled, Transient

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "expected"),
    [
        (200, b'{"status": "completed", "mode": "improve", "session_id": 3, "result": {"a": 1}}',
         None, Answer("completed", "improve", 3, {"a": 1}, None)),
        (200, b'{"status": "in_progress", "session_id": true}', None,
         Answer("in_progress", None, None, None, None)),
        (200, b"not json", None, Transient("unreadable body: not JSON")),
        (200, b"[1, 2]", None, Transient("unreadable body: JSON is not an object")),
        (200, b'{"status": 5}', None, Transient("unreadable body: no string status")),
        (400, b'{"progress_id": ["Bad.", "Worse."]}', None, Rejected("progress_id: Bad.; Worse.")),
        (404, b"{}", None, NotFound()),
        (429, b"", "7", Throttled(7.0, "HTTP 429")),
        (429, b"", None, Throttled(None, "HTTP 429")),
        (429, b"", "soon", Throttled(None, "HTTP 429")),
        (503, b"", "Thu, 01 Jan 1970 00:00:00 GMT", Throttled(0.0, "HTTP 503")),
        (503, b"", None, Transient("HTTP 503")),
        (500, b"oops", None, Transient("HTTP 500")),
    ],
    ids=["done", "bool-session", "not-json", "not-object", "no-status", "400", "404",
         "429-seconds", "429-bare", "429-garbage", "503-date", "503-bare", "500"],
)  # fmt: skip
def test_classify(status: int, body: bytes, retry_after: str | None, expected: object) -> None:
    """Each answer maps to exactly one outcome."""
    assert classify(status, body, retry_after, wall=NOW) == expected


def test_field_messages_of_a_non_json_400() -> None:
    """A 400 body that is not JSON is kept as text."""
    assert field_messages(b"bad request") == "bad request"


@asynccontextmanager
async def server(routes: web.RouteTableDef) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_same_origin_redirect_is_followed_and_another_origin_is_not() -> None:
    """A same-origin redirect is followed; one to another origin never receives the key."""
    seen_elsewhere: list[str | None] = []
    other = web.RouteTableDef()

    @other.get("/p")
    async def elsewhere(request: web.Request) -> web.Response:
        seen_elsewhere.append(request.headers.get("X-CEKURA-API-KEY"))
        return web.json_response({"status": "completed"})

    async with server(other) as other_url:
        routes = web.RouteTableDef()

        @routes.get("/p")
        async def first(request: web.Request) -> web.Response:
            pid = request.query["progress_id"]
            if pid == "away":
                raise web.HTTPFound(f"{other_url}/p?progress_id=away")
            raise web.HTTPFound(f"/q?progress_id={pid}")

        @routes.get("/q")
        async def second(request: web.Request) -> web.Response:
            assert request.headers["X-CEKURA-API-KEY"] == KEY
            return web.json_response({"status": "completed", "mode": "clarify"})

        async with server(routes) as url:
            settings = replace(FAST, base_url=url, path="/p")
            async with ApiClient(settings) as client:
                home = await client.poll("here")
                away = await client.poll("away")
    assert home == Answer("completed", "clarify", None, None, None)
    assert isinstance(away, Broken)
    assert "another origin" in away.reason
    assert seen_elsewhere == []


@pytest.mark.anyio
async def test_401_raises_auth_refused_and_timeouts_are_transient() -> None:
    """A 401 raises AuthRefused; an answer slower than request_timeout is a transient failure."""
    import anyio

    routes = web.RouteTableDef()

    @routes.get("/p")
    async def handler(request: web.Request) -> web.Response:
        if request.query["progress_id"] == "slow":
            await anyio.sleep(5)
        return web.json_response({}, status=401)

    async with server(routes) as url:
        settings = replace(FAST, base_url=url, path="/p", request_timeout=0.2)
        async with ApiClient(settings) as client:
            with pytest.raises(AuthRefused):
                await client.poll("x")
            started = anyio.current_time()
            slow = await client.poll("slow")
            took = anyio.current_time() - started
    assert slow == Transient("timeout after 0.2s")
    assert took >= 0.2  # never early; how late depends on the machine, so no upper bound


@pytest.mark.anyio
async def test_a_cancel_from_outside_wins_over_the_request_timeout() -> None:
    """Cancelling a poll (a deadline, Ctrl-C) cancels it, before or after its timeout fires."""
    import anyio

    release = anyio.Event()
    routes = web.RouteTableDef()

    @routes.get("/p")
    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"status": "completed"})

    async with server(routes) as url:
        settings = replace(FAST, base_url=url, path="/p", request_timeout=0.1)
        async with ApiClient(settings) as client:
            with anyio.move_on_after(0.02) as early:  # cancelled before its timeout
                await client.poll("a")
            with anyio.move_on_after(5) as later:  # the timeout comes first
                timed_out = await client.poll("b")
            release.set()
            after = await client.poll("c")
            task = asyncio.current_task()
            assert task is not None
            left_cancelling = task.cancelling()
    assert early.cancelled_caught
    assert not later.cancelled_caught
    assert timed_out == Transient("timeout after 0.1s")
    assert after == Answer("completed", None, None, None, None)
    assert left_cancelling == 0  # every cancel the timeout made was taken back


@pytest.mark.anyio
async def test_many_concurrent_timeouts_each_end_once() -> None:
    """Every one of many stalled polls becomes one timeout, and none leaks into the next poll."""
    import anyio

    routes = web.RouteTableDef()

    @routes.get("/p")
    async def handler(request: web.Request) -> web.Response:
        if request.query["progress_id"].startswith("slow"):
            await anyio.sleep(5)
        return web.json_response({"status": "completed"})

    results: list[object] = []
    async with server(routes) as url:
        settings = replace(FAST, base_url=url, path="/p", request_timeout=0.1, concurrency=8)
        async with ApiClient(settings) as client:

            async def one(pid: str) -> None:
                results.append(await client.poll(pid))
                results.append(await client.poll(f"fast-{pid}"))

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, f"slow-{i}")
    assert results.count(Transient("timeout after 0.1s")) == 8
    assert results.count(Answer("completed", None, None, None, None)) == 8


def test_classify_reads_the_raw_content_type_header() -> None:
    """The media type is matched case-blind, parameters ignored, and named without them."""
    body = b'{"status": "completed"}'
    done = Answer("completed", None, None, None, None)
    upper = classify(200, body, None, wall=NOW, content_type="Application/JSON; charset=utf-8")
    assert upper == done
    html = classify(200, body, None, wall=NOW, content_type="text/html; charset=utf-8")
    assert html == Transient("unreadable body: content type text/html")
    assert classify(200, body, None, wall=NOW, content_type="") == Transient(
        "unreadable body: content type missing"
    )


# -- hostile answers, each over a real loopback server ----------------------------------------


async def poll_raw(answer: bytes, pid: str = "x", **overrides: object) -> object:
    """What one poll of *pid* returns when the server answers every request with *answer*."""
    import anyio

    async with raw_server() as srv:
        srv.response = answer
        settings = replace(FAST, base_url=srv.url, path="/p", request_timeout=2.0, **overrides)
        async with ApiClient(settings) as client:
            with anyio.fail_after(5):
                return await client.poll(pid)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:1:2/x",
        "http://[::1",
        "//[::1/x",
        "http://127.0.0.1:99999999999999999999/x",
        "http://127.0.0.1:65536/",
        "http://xn--/",
        "http://\udcff/",
    ],
    ids=["two-ports", "open-bracket", "scheme-relative-bracket", "huge-port", "port-65536",
         "bad-idna", "undecodable-host"],
)  # fmt: skip
async def test_an_unusable_location_ends_the_id_as_broken(location: str) -> None:
    """A redirect whose Location cannot be parsed or joined is Broken, not a crash."""
    raw = location.encode("utf-8", "surrogateescape")
    answer = b"HTTP/1.1 302 Found\r\nLocation: " + raw + b"\r\nContent-Length: 0\r\n\r\n"
    assert await poll_raw(answer) == Broken("HTTP 302 redirect with an unusable Location")


@pytest.mark.anyio
async def test_a_redirect_to_a_hostless_scheme_is_another_origin() -> None:
    """A Location such as mailto: is another origin, reported without raising."""
    outcome = await poll_raw(response(301, headers={"Location": "mailto:x"}))
    assert isinstance(outcome, Broken)
    assert "another origin (mailto:)" in outcome.reason


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.anyio
async def test_a_result_too_deep_to_write_is_broken() -> None:
    """A result nested deeper than orjson writes ends the id as an error, not the sink."""
    body = b'{"status": "completed", "result": ' + _nested(600) + b"}"
    outcome = await poll_raw(response(200, body, headers={"Content-Type": "application/json"}))
    assert outcome == Broken(
        "unreadable body: result cannot be written as JSON: Recursion limit reached"
    )


@pytest.mark.anyio
async def test_odd_values_in_an_answer_are_made_writable() -> None:
    """Huge integers, a session_id past 64 bits, a deep non-string error and a long mode all
    end up in an Answer whose record can be written."""
    from batchpoll._io.body import MAX_WORD
    from batchpoll.records import Record

    body = (
        b'{"status": "completed", "session_id": 18446744073709551615, "mode": "'
        + b"m" * 50_000
        + b'", "error": {"e": '
        + _nested(1000)
        + b'}, "result": {"n": 123456789012345678901234567890, "m": -18446744073709551617}}'
    )
    outcome = await poll_raw(response(200, body, headers={"Content-Type": "application/json"}))
    assert isinstance(outcome, Answer)
    assert outcome.session_id is None
    assert outcome.result == {"n": 1.2345678901234568e29, "m": -1.8446744073709552e19}
    assert outcome.mode is not None
    assert outcome.mode.startswith("m" * MAX_WORD)
    assert outcome.mode.endswith(f"… [{50_000 - MAX_WORD} more characters cut]")
    assert outcome.error == "<dict too deeply nested to show>"
    rec = Record(
        progress_id="x",
        status=outcome.status,
        mode=outcome.mode,
        session_id=outcome.session_id,
        result=outcome.result,
        error=outcome.error,
    )
    assert rec.to_json_line().endswith(b"\n")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"status": "x", "n": 1e999}', "unreadable body: not JSON"),
        (b'{"status": "\\ud800"}', "unreadable body: not JSON"),
        (b'{"status": "\xff"}', "unreadable body: not JSON"),
        (b'{"status": NaN}', "unreadable body: not JSON"),
        (_nested(1100), "unreadable body: not JSON"),
    ],
    ids=["infinity", "lone-surrogate", "invalid-utf8", "nan", "deeper-than-orjson-reads"],
)
async def test_json_orjson_refuses_to_read_is_transient(body: bytes, reason: str) -> None:
    """JSON orjson.loads refuses (1e999, lone surrogates, bad UTF-8, NaN, 1100 levels) is
    an unreadable body, retried like any other."""
    answer = response(200, body, headers={"Content-Type": "application/json"})
    assert await poll_raw(answer) == Transient(reason)


def test_a_400_with_deep_or_odd_messages_is_one_writable_line() -> None:
    """A 400 body nested too deep for str() or holding non-strings still gives one line."""
    assert field_messages(b'{"f": [' + _nested(1000) + b"]}") == (
        "f: <list too deeply nested to show>"
    )
    assert field_messages(b'{"f": [1, {"a": null}], "g": "x"}') == 'f: 1; {"a":null} | g: x'
    assert field_messages(_nested(3)) == "[[[]]]"


def _gzip_bomb(decoded: int) -> bytes:
    """A gzip stream of *decoded* zero bytes (about a thousandth of that on the wire)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(decoded >> 20)]
    return b"".join([*parts, packer.flush()])


@pytest.mark.anyio
@pytest.mark.parametrize("length", [True, False], ids=["with-length", "chunked-or-close"])
async def test_a_gzip_bomb_is_capped_by_its_decoded_size(length: bool) -> None:
    """A small gzip body that inflates past MAX_BODY is an unreadable body, with or without
    a (small, honest) Content-Length."""
    bomb = _gzip_bomb(64 << 20)
    assert len(bomb) < 200_000
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    outcome = await poll_raw(response(200, bomb, headers=headers, length=length))
    assert outcome == Transient(f"unreadable body: larger than {MAX_BODY} bytes")


@pytest.mark.anyio
async def test_an_honest_gzip_body_is_read() -> None:
    """A gzip body within the cap is decoded and parsed as usual."""
    import gzip

    body = gzip.compress(b'{"status": "completed", "result": {"a": 1}}')
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    outcome = await poll_raw(response(200, body, headers=headers))
    assert outcome == Answer("completed", None, None, {"a": 1}, None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 500\r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: lots\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Encoding: gzip\r\nContent-Length: 23\r\n",
        b"Content-Encoding: br\r\nContent-Length: 23\r\n",
    ],
    ids=["longer", "shorter", "not-a-number", "negative", "twice", "not-really-gzip",
         "br-without-brotli"],
)  # fmt: skip
async def test_a_lying_head_ends_as_an_outcome(head: bytes) -> None:
    """A Content-Length or Content-Encoding that lies about the body is an outcome, not a crash."""
    body = b'{"status": "completed"}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head + b"\r\n" + body
    outcome = await poll_raw(answer)
    assert isinstance(outcome, Answer | Transient | Broken), outcome


_BOMB_CHILD = """
import asyncio, os, sys
from batchpoll._io.client import ApiClient
from batchpoll._core.config import Secret, Settings

async def main():
    settings = Settings(api_key=Secret(os.environ["CEKURA_API_KEY"]), base_url=sys.argv[1],
                        path="/p", concurrency=4, request_timeout=20.0)
    async with ApiClient(settings) as client:
        outcomes = await asyncio.gather(*(client.poll(f"bomb-{i}") for i in range(4)))
    for outcome in outcomes:
        print(outcome)
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:"))
    print(int(peak.split()[1]) // 1024)

asyncio.run(main())
"""


@pytest.mark.anyio
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
async def test_four_gzip_bombs_at_once_keep_memory_bounded(tmp_path: Path) -> None:
    """Four workers each receiving a 200 MB gzip bomb at once peak well under 150 MB RSS."""
    import anyio

    bomb = _gzip_bomb(200 << 20)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
    async with raw_server() as srv:
        srv.response = response(200, bomb, headers=headers)
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-c", _BOMB_CHILD, srv.url], env=env, check=False
            )
    assert done.returncode == 0, done.stderr.decode()
    *outcomes, peak_mb = done.stdout.decode().split("\n")[:-1]
    assert outcomes == [f"Transient(reason='unreadable body: larger than {MAX_BODY} bytes')"] * 4
    assert srv.requests == 4
    assert int(peak_mb) < 150, f"peak RSS {peak_mb} MB"


# -- Retry-After: always a wait the run honours ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("86400", 6 * 3600.0),
        ("99999999999999999999", 6 * 3600.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 6 * 3600.0),
        ("2.5", 2.5),
    ],
    ids=["a-day", "twenty-digits", "year-9999", "decimal"],
)
def test_classify_gives_a_float_retry_after_even_past_the_cap(value: str, expected: float) -> None:
    """A 429's Retry-After is a float wait, also when the cap replaces what the server said."""
    outcome = classify(429, b"", value, wall=NOW)
    assert isinstance(outcome, Throttled)
    assert type(outcome.retry_after) is float
    assert outcome.retry_after == expected


@pytest.mark.anyio
async def test_a_retry_after_of_a_day_past_the_deadline_times_every_id_out_at_once() -> None:
    """Retry-After 86400 (above the 6 h cap) with --deadline 600: one 429, then every id
    ends timed_out without waiting for either."""
    import anyio

    from batchpoll.simulator import SimSettings, running_simulator

    sim_settings = SimSettings(api_key=KEY, rate_limit=1.0, retry_after="86400", pending=True)
    ids = [f"day-{i}" for i in range(10)]
    with anyio.fail_after(10):  # a guard: waiting out the pause or the deadline takes 600 s+
        async with running_simulator(sim_settings) as sim:
            records, stats = await helpers.poll(ids, sim, deadline=600.0, concurrency=1, burst=1)
    assert sorted(r.progress_id for r in records) == sorted(ids)
    assert {r.status for r in records} == {"timed_out"}
    assert sim.stats.by_status[429] == 1
    assert stats.throttled == 1
