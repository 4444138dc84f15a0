"""A fake Cekura progress API: a real ``aiohttp.web`` server on loopback, counting what it sees.

Tests, ``batchpoll demo``, ``batchpoll simulate`` and the benchmarks all poll this one fake.
It serves ``GET <path>?progress_id=<id>`` on ``SimSettings.path`` and on the SDK's
``SDK_PATH`` (with and without the trailing slash); what each id gets is in :mod:`.fates`,
apart from these answers, which depend on the request rather than the id:

=========================  ==============================================================
request                    answer
=========================  ==============================================================
``redirect-...``           302 to ``{redirect_url}{path}?progress_id=<id>`` (another origin),
                           not a poll; 400 as ``reject-`` when ``redirect_url`` is None
``hop-...``                302 to ``SDK_PATH?progress_id=<id>`` (same origin), not a poll;
                           at ``SDK_PATH`` itself it answers as any other id
no ``progress_id``         400 ``{"progress_id": ["This field is required."]}``
``progress_id=`` (empty)   400 ``{"progress_id": ["This field may not be blank."]}``
=========================  ==============================================================

``GET /__simulator/stats`` answers the server's own counts as JSON (requests, most in flight,
most in any one-second window, rate over the busy span, faults by kind), for runs against
``batchpoll simulate``.

Each request goes through, in order: the key check (401, also for every request after the
first ``unauthorized_after``), the rate limit (429), fault injection, ``latency``, the answer.
Fault injection draws one number per request from ``Random(seed)`` and turns it into at most
one fault, at these rates:

=================  =================================================================
``error_rate``     500, 502 or 503 with a JSON body and no Retry-After
``drop_rate``      the connection is aborted before any response is sent
``truncate_rate``  200 with the whole body's Content-Length, half the body, then close
``slow_rate``      200, half the body, ``slow_body_s`` of silence, then the rest
``garbage_rate``   200 whose body is unusable, in turn: ``<html>oops</html>`` as
                   text/html, ``[1,2]`` as application/json, a progress object as
                   text/plain
``throttle_rate``  429, however slowly the client polls (``rate_limit`` aside)
=================  =================================================================

Every 429 (rate limit or fault) takes its Retry-After (delta-seconds, an HTTP-date, or no
header) at random from ``SimSettings.retry_after_forms``. Only requests that reach the answer
count as polls of their id, so no fault, throttle or redirect changes an id's fate. A faulted
200 that carries a progress object (truncate, slow, text/plain garbage) shows the id as it
stands, without counting a poll: even a client that reads it learns nothing the last real
answer did not say.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

import orjson
from aiohttp import web

from .._core.loopback import is_loopback_host
from .fates import answer, detail, progress_body
from .policer import GcraPolicer
from .settings import DEFAULT_SETTINGS, SimSettings, fault_rates, retry_forms
from .stats import SimStats

SDK_PATH: Final = "/test_framework/v1/scenarios-external/scenario-agent-progress"
#: Where the server reports its own counts (not part of the Cekura API).
STATS_PATH: Final = "/__simulator/stats"

_JSON: Final = "application/json"
_FAULTS: Final = (500, 502, 503)
_UNAUTHORIZED: Final = detail("Invalid API key.")
_THROTTLED: Final = detail("Request was throttled.")
_SERVER_ERROR: Final = detail("Server error.")
_REQUIRED: Final = orjson.dumps({"progress_id": ["This field is required."]})
_BLANK: Final = orjson.dumps({"progress_id": ["This field may not be blank."]})


def _http_date(wall: float) -> str:
    """*wall* (Unix seconds) as an HTTP-date, rounded up: the format has whole seconds only."""
    return email.utils.format_datetime(datetime.fromtimestamp(math.ceil(wall), UTC), usegmt=True)


class Simulator:
    """A running fake API; ``url`` is its base (``http://127.0.0.1:PORT``, no path)."""

    __slots__ = (
        "_changed",
        "_fault_slices",
        "_faults",
        "_garbage_turn",
        "_limiter",
        "_retry_forms",
        "settings",
        "stats",
        "url",
    )

    def __init__(self, settings: SimSettings, url: str = "") -> None:
        self.settings = settings
        self.stats = SimStats()
        self.url = url
        rate = settings.rate_limit
        self._limiter = None if rate is None else GcraPolicer(rate, settings.rate_burst)
        self._faults = random.Random(settings.seed)
        # (kind, rate) for each fault that can happen: consecutive slices of one draw in [0, 1).
        self._fault_slices = tuple((kind, r) for kind, r in fault_rates(settings) if r > 0)
        self._garbage_turn = 0  # which unusable body the next garbage fault sends
        self._retry_forms = retry_forms(settings)
        self._changed: asyncio.Event | None = None  # set on any in_flight change, if awaited

    def __repr__(self) -> str:
        return f"Simulator(url={self.url!r}, {self.stats!r})"

    @property
    def endpoint(self) -> str:
        """The full polling URL: ``url`` + ``settings.path``."""
        return self.url + self.settings.path

    async def wait_until(self, predicate: Callable[[SimStats], bool]) -> None:
        """Return once ``predicate(stats)`` holds, re-checking as requests arrive and leave."""
        while not predicate(self.stats):
            changed = self._changed = self._changed or asyncio.Event()
            await changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _count_status(self, status: int) -> None:
        by_status = self.stats.by_status
        by_status[status] = by_status.get(status, 0) + 1

    def _reply(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = _JSON,
    ) -> web.Response:
        self._count_status(status)
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    def _throttle(self, now: float) -> web.Response:
        """A 429 with a Retry-After in one of the configured forms, picked at random."""
        self.stats.throttled_at.append(now)
        forms = self._retry_forms
        # Draw only when there is a choice: a single form costs no draw, so the faults a seed
        # gives do not depend on how many 429s were sent.
        form = forms[int(self._faults.random() * len(forms))] if len(forms) > 1 else forms[0]
        if form == "none":
            return self._reply(429, _THROTTLED)
        value = _http_date(time.time() + 1) if form == "date" else form
        return self._reply(429, _THROTTLED, {"Retry-After": value})

    async def _stats(self, _request: web.Request) -> web.Response:
        """What the server counted so far, for runs against ``batchpoll simulate``."""
        st = self.stats
        arrivals = st.arrivals
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        body = {
            "requests": st.requests,
            "max_in_flight": st.max_in_flight,
            "max_in_1s_window": st.max_in_window(1.0),
            "busy_span_s": round(span, 3),
            "rate_over_busy_span": round((len(arrivals) - 1) / span, 2) if span else 0.0,
            "by_status": {str(k): v for k, v in sorted(st.by_status.items())},
            "ids_polled": len(st.polls_by_id),
            "faults": dict(sorted(st.faults.items())),
        }
        return web.Response(body=orjson.dumps(body), content_type=_JSON)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one poll (aiohttp handler); see the module docstring for the order of checks."""
        stats = self.stats
        now = time.monotonic()
        stats.requests += 1
        stats.arrivals.append(now)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        self._notify()
        try:
            return await self._answer(request, now)
        finally:
            stats.in_flight -= 1
            self._notify()

    async def _answer(self, request: web.Request, now: float) -> web.StreamResponse:
        s = self.settings
        if s.api_key is not None and request.headers.get("X-CEKURA-API-KEY") != s.api_key:
            return self._reply(401, _UNAUTHORIZED)
        # stats.requests already counts this request, so it is the request's 1-based number.
        if s.unauthorized_after is not None and self.stats.requests > s.unauthorized_after:
            return self._reply(401, _UNAUTHORIZED)
        if self._limiter is not None and not self._limiter.admit(now):
            return self._throttle(now)
        fault = self._draw_fault()
        if fault is not None:
            faults = self.stats.faults
            faults[fault] = faults.get(fault, 0) + 1
            return await self._inject(fault, request, now)
        if s.latency:
            await asyncio.sleep(s.latency)
        # rel_url.query is already percent-decoded: the id arrives exactly as the client had it.
        pid = request.rel_url.query.get("progress_id")
        if not pid:
            return self._reply(400, _REQUIRED if pid is None else _BLANK)
        query = "progress_id=" + quote(pid, safe="")
        if pid.startswith("hop-") and request.path not in (SDK_PATH, SDK_PATH + "/"):
            return self._reply(302, b"", {"Location": f"{SDK_PATH}?{query}"})
        if pid.startswith("redirect-") and s.redirect_url is not None:
            there = s.redirect_url.rstrip("/") + request.rel_url.raw_path
            return self._reply(302, b"", {"Location": f"{there}?{query}"})
        polls = self.stats.polls_by_id[pid] = self.stats.polls_by_id.get(pid, 0) + 1
        return self._reply(*answer(pid, s, polls))

    def _draw_fault(self) -> str | None:
        """The fault this request gets, if any: one draw, cut into one slice per fault."""
        if not self._fault_slices:
            return None
        draw = self._faults.random()
        for kind, rate in self._fault_slices:
            if draw < rate:
                return kind
            draw -= rate
        return None

    async def _inject(self, fault: str, request: web.Request, now: float) -> web.StreamResponse:
        match fault:
            case "error":
                status = _FAULTS[int(self._faults.random() * len(_FAULTS))]
                return self._reply(status, _SERVER_ERROR)
            case "throttle":
                return self._throttle(now)
            case "drop":
                # abort() closes the socket at once, discarding anything buffered: the client
                # gets no status line. aiohttp's attempt to send the response returned here
                # then fails with ConnectionResetError, which it takes for a client hang-up and
                # logs at debug level only, with no traceback.
                if request.transport is not None:
                    request.transport.abort()
                return web.Response()
            case "garbage":
                return self._garbage(request)
            case _:  # "truncate" or "slow"
                return await self._cut_short(fault == "slow", request)

    def _as_it_stands(self, request: web.Request) -> bytes:
        """The id's progress object at its last counted poll, for faults that show one."""
        pid = request.rel_url.query.get("progress_id", "")
        return progress_body(pid, self.settings, self.stats.polls_by_id.get(pid, 0))

    def _garbage(self, request: web.Request) -> web.Response:
        turn, self._garbage_turn = self._garbage_turn, (self._garbage_turn + 1) % 3
        if turn == 0:
            return self._reply(200, b"<html>oops</html>", content_type="text/html")
        if turn == 1:
            return self._reply(200, b"[1,2]")
        return self._reply(200, self._as_it_stands(request), content_type="text/plain")

    async def _cut_short(self, slow: bool, request: web.Request) -> web.StreamResponse:
        """A 200 promising the whole body, sending half, then stalling (slow) or closing."""
        body = self._as_it_stands(request)
        half = len(body) // 2
        response = web.StreamResponse()
        response.content_type = _JSON
        response.content_length = len(body)
        if not slow:
            # aiohttp then ends the connection with close(), which flushes the half body first.
            response.force_close()
        self._count_status(200)
        await response.prepare(request)
        await response.write(body[:half])
        if slow:
            # A client that hangs up meanwhile cancels this handler (handler_cancellation).
            await asyncio.sleep(self.settings.slow_body_s)
            await response.write(body[half:])
        return response


def bind_host(host: str) -> str:
    """*host* as an address to bind, or ValueError if it is not a loopback address."""
    if not is_loopback_host(host):
        raise ValueError(f"the simulator binds loopback only (127.0.0.1 or ::1), not {host!r}")
    return "127.0.0.1" if host.lower() == "localhost" else host.removeprefix("[").removesuffix("]")


@asynccontextmanager
async def running_simulator(
    settings: SimSettings = DEFAULT_SETTINGS, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """Serve *settings* on loopback (port 0 = a free port) for the ``async with`` block.

    Raises ValueError for a non-loopback *host*. A client hanging up cancels its request's
    handler, and exit does not wait for requests still sleeping in ``latency``.
    """
    host = bind_host(host)
    sim = Simulator(settings)
    app = web.Application()
    for path in dict.fromkeys((settings.path, SDK_PATH, SDK_PATH + "/")):
        app.router.add_get(path, sim._handle, allow_head=False)
    app.router.add_get(STATS_PATH, sim._stats, allow_head=False)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        sim.url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
        yield sim
    finally:
        await runner.cleanup()
