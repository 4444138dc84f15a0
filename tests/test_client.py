"""The HTTP boundary: answers classified purely, and the client's redirect rules over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
from aiohttp import web
from helpers import FAST, KEY

from batchpoll.client import ApiClient, classify, field_messages
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
