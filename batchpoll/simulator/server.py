"""A fake Cekura progress API: a real ``aiohttp.web`` server on loopback, counting what it sees.

Tests, ``batchpoll demo``, ``batchpoll simulate`` and the benchmarks all poll this one fake.
Every id's fate is a pure function of ``(seed, id)`` (see :func:`truth`), so a run can be checked
against what the server was always going to answer. It serves ``GET <path>?progress_id=<id>``
on ``SimSettings.path`` and on the SDK's ``SDK_PATH`` (with and without the trailing slash).

=========================  ==============================================================
request                    answer
=========================  ==============================================================
any other id               200 ``in_progress`` for polls 1..k-1, then its terminal body
``notfound-...``           404 ``{"detail": "Not found."}``
``reject-...``             400 ``{"progress_id": ["Invalid progress id."]}``
``weird-...``              200 ``queued`` (an unknown, non-terminal status) for polls 1..k-1,
                           then terminal as any other id
``slow-...``               200 ``in_progress`` forever (as every id does with ``pending``)
``flaky-...``              503 without Retry-After, on every poll
``huge-...``               200 with an ~11 MiB JSON object (a big string in ``result``), on
                           every poll: more than a client capping bodies at 10 MiB can read
``list-...``               200 ``[]`` (JSON, but not an object), on every poll
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

import argparse
import asyncio
import email.utils
import hashlib
import ipaddress
import math
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import anyio
import orjson
from aiohttp import web

from .._core.redact import shown

SDK_PATH: Final = "/test_framework/v1/scenarios-external/scenario-agent-progress"
#: Where the server reports its own counts (not part of the Cekura API).
STATS_PATH: Final = "/__simulator/stats"
#: ``truth()``'s poll count for an id that never ends.
NEVER: Final = -1

_JSON: Final = "application/json"
_FAULTS: Final = (500, 502, 503)
# A Retry-After form: delta-seconds (fractions allowed, as some servers send), "date", "none".
_RETRY_FORM: Final = re.compile(r"[0-9]+(\.[0-9]+)?|date|none")
# Above the 10 MiB a careful client caps bodies at, with room for the JSON around the string.
_HUGE_STRING: Final = 11 * 2**20
# Cumulative weights out of 100: completed 80, failed 8, cancelled 4, needs_* 4 each.
_TERMINALS: Final = (
    (80, "completed"),
    (88, "failed"),
    (92, "cancelled"),
    (96, "needs_clarification"),
    (100, "needs_agent_clarification"),
)
_QUESTIONS: Final = (
    "Which phone number should the agent call?",
    "Should the agent confirm the appointment time with the caller?",
    "What language should the scenarios be written in?",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """How the fake API behaves; times in seconds, rates in requests per second.

    Fault rates are fractions of requests (each in 0..1, together at most 1); all default to 0.
    """

    seed: int = 0
    api_key: str | None = None  # when set, any other X-CEKURA-API-KEY gets 401
    unauthorized_after: int | None = None  # every request after this many gets 401 (key revoked)
    min_polls: int = 1  # k per id is drawn from [min_polls, max_polls]
    max_polls: int = 4
    pending: bool = False  # every id that would end stays non-terminal forever
    latency: float = 0.0  # wait before each answer; the request counts as in flight meanwhile
    rate_limit: float | None = None  # GCRA policing all requests together; None = unlimited
    rate_burst: int = 1  # requests admitted back-to-back at rate_limit
    retry_after: str | None = "1"  # Retry-After form of each 429; None = no header
    # Forms each 429 picks its Retry-After from at random; None = just (retry_after,). A form is
    # delta-seconds ("1", "0.5"), "date" (an HTTP-date 1 s ahead, rounded up to a whole
    # second) or "none" (no header).
    retry_after_forms: tuple[str, ...] | None = None
    error_rate: float = 0.0  # 500/502/503
    drop_rate: float = 0.0  # connection aborted, no response
    truncate_rate: float = 0.0  # 200 cut short of its Content-Length, then closed
    slow_rate: float = 0.0  # 200 that stalls slow_body_s halfway through its body
    slow_body_s: float = 5.0
    garbage_rate: float = 0.0  # 200 with an unusable body
    throttle_rate: float = 0.0  # 429 regardless of rate_limit
    redirect_url: str | None = None  # loopback http base URL that redirect- ids are sent to
    path: str = "/test_framework/v1/scenarios/scenario-agent-progress/"

    def __post_init__(self) -> None:
        if not 1 <= self.min_polls <= self.max_polls:
            raise ValueError("need 1 <= min_polls <= max_polls")
        if self.latency < 0 or self.slow_body_s < 0 or self.rate_burst < 1:
            raise ValueError("need latency >= 0, slow_body_s >= 0 and rate_burst >= 1")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 (or None for no limit)")
        rates = _fault_rates(self)
        for kind, rate in rates:
            if not 0 <= rate <= 1:
                raise ValueError(f"need 0 <= {kind}_rate <= 1, not {rate!r}")
        # The slack forgives float sums such as 6 * (1 / 6).
        if sum(rate for _, rate in rates) > 1 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        forms = _retry_forms(self)
        if not forms or not all(_RETRY_FORM.fullmatch(form) for form in forms):
            raise ValueError(
                f"Retry-After forms are delta-seconds, 'date' or 'none'; not {list(forms)!r}"
            )
        if self.unauthorized_after is not None and self.unauthorized_after < 0:
            raise ValueError("unauthorized_after must be >= 0 (or None)")
        if self.redirect_url is not None and not _loopback_http(self.redirect_url):
            raise ValueError(
                f"redirect_url must be an http:// URL on loopback, not {self.redirect_url!r}"
            )


def _fault_rates(settings: SimSettings) -> tuple[tuple[str, float], ...]:
    # The order fixes which slice of the one draw per request each fault owns; error comes
    # first so a run with only error_rate draws exactly as it did before the other faults.
    return (
        ("error", settings.error_rate),
        ("drop", settings.drop_rate),
        ("truncate", settings.truncate_rate),
        ("slow", settings.slow_rate),
        ("garbage", settings.garbage_rate),
        ("throttle", settings.throttle_rate),
    )


def _retry_forms(settings: SimSettings) -> tuple[str, ...]:
    if settings.retry_after_forms is not None:
        return settings.retry_after_forms
    return ("none",) if settings.retry_after is None else (settings.retry_after,)


def _loopback_http(url: str) -> bool:
    """Whether *url* is a plain ``http://`` URL on a loopback host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a port that is not a number in range
        host = parts.hostname or ""
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    return loopback and parts.scheme == "http" and not parts.query and not parts.fragment


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """Most of *times* (seconds, any order) within any closed interval ``[t, t + window]``."""
    ordered = sorted(times)
    best = start = 0
    # Two pointers: ordered[start..end] is the longest run ending at ordered[end] within window.
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(slots=True)
class SimStats:
    """What the server saw, counted where the contract's limits are checked.

    ``by_status`` counts the status lines sent (none for a dropped request, or one whose client
    hung up during ``latency``; a truncated or slow 200 counts as 200). ``polls_by_id`` counts
    the requests per id that got the real answer: past the key check, the rate limit and fault
    injection, and not redirected. ``faults`` counts injected faults by kind (``"error"``,
    ``"drop"``, ``"truncate"``, ``"slow"``, ``"garbage"``, ``"throttle"``; absent until one
    happens). ``arrivals`` holds one ``time.monotonic()`` per request.
    """

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    polls_by_id: dict[str, int] = field(default_factory=dict, repr=False)
    faults: dict[str, int] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list, repr=False)
    throttled_at: list[float] = field(default_factory=list, repr=False)  # arrivals answered 429

    def max_in_window(self, window: float = 1.0) -> int:
        """Most arrivals within any closed interval ``[t, t + window]`` (seconds)."""
        return max_in_window(self.arrivals, window)

    @property
    def max_per_second(self) -> int:
        """Most arrivals within any one second."""
        return self.max_in_window(1.0)

    def rate_between(self, start: float, end: float) -> float:
        """Arrivals in ``[start, end]`` per second; ``end`` must be after ``start``."""
        if end <= start:
            raise ValueError("end must be after start")
        return sum(start <= t <= end for t in self.arrivals) / (end - start)


@dataclass(frozen=True, slots=True)
class _Fate:
    status: str  # the terminal status this id ends with
    polls: int  # k: the poll (1-based) that first answers it
    mode: str
    session_id: int | None
    digest: int


def _fate(progress_id: str, settings: SimSettings) -> _Fate:
    # blake2b, never hash(): fates must agree across processes, runs and machines.
    raw = f"{settings.seed}:{progress_id}".encode("utf-8", "surrogatepass")
    h = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
    # Bit fields of h: 0-15 k, 16-31 status, 32 mode, 33-40 session null, 41-63 session id.
    span = settings.max_polls - settings.min_polls + 1
    bucket = (h >> 16 & 0xFFFF) % 100
    status = next(name for bound, name in _TERMINALS if bucket < bound)
    session = None if (h >> 33 & 0xFF) % 10 == 0 else (h >> 41) + 1
    return _Fate(
        status=status,
        polls=settings.min_polls + (h & 0xFFFF) % span,
        mode="improve" if h >> 32 & 1 else "clarify",
        session_id=session,
        digest=h,
    )


def truth(progress_id: str, settings: SimSettings) -> tuple[str, int]:
    """What *progress_id* ends as under *settings*, and after how many counted polls.

    Terminal statuses come with k >= 1 (``hop-`` ids too: their redirect is no poll);
    ``("not_found", 1)`` and ``("rejected", 1)`` for those forms (and for ``redirect-`` ids
    when ``redirect_url`` is None); ``("in_progress", NEVER)`` for ids that never end (``slow-``
    or ``pending``); ``("error", NEVER)`` for ids no careful client can ever read an answer for:
    ``flaky-``, ``huge-``, ``list-`` and ``redirect-`` ids sent to another origin. Pure: no
    server state, faults or rate limits.
    """
    if progress_id.startswith("notfound-"):
        return "not_found", 1
    if progress_id.startswith("reject-"):
        return "rejected", 1
    if progress_id.startswith("redirect-"):
        return ("rejected", 1) if settings.redirect_url is None else ("error", NEVER)
    if progress_id.startswith(("flaky-", "huge-", "list-")):
        return "error", NEVER
    if settings.pending or progress_id.startswith("slow-"):
        return "in_progress", NEVER
    fate = _fate(progress_id, settings)
    return fate.status, fate.polls


def _result(fate: _Fate) -> dict[str, Any] | None:
    # Random(int) + random() only: the one pairing Python promises stays the same across versions.
    draw = random.Random(fate.digest).random
    if fate.status == "completed":
        scenarios = [
            {
                "id": 1 + int(draw() * 99_999),
                "name": f"{fate.mode} scenario {n}",
                "score": round(draw() * 100, 1),
            }
            for n in range(1, 2 + int(draw() * 3))
        ]
        summary = f"{len(scenarios)} scenario(s) evaluated."
        return {"scenarios": scenarios, "summary": summary, "evaluator_id": 1 + int(draw() * 9999)}
    if fate.status.startswith("needs_"):
        return {"questions": list(_QUESTIONS[: 1 + int(draw() * len(_QUESTIONS))])}
    return None


def _progress_body(progress_id: str, settings: SimSettings, poll: int) -> bytes:
    fate = _fate(progress_id, settings)
    waiting = "queued" if progress_id.startswith("weird-") else "in_progress"
    done = poll >= fate.polls and not settings.pending and not progress_id.startswith("slow-")
    return orjson.dumps(
        {
            "progress_id": progress_id,
            "session_id": fate.session_id,
            "mode": fate.mode,
            "status": fate.status if done else waiting,
            "result": _result(fate) if done else None,
            "error": "The agent run failed." if done and fate.status == "failed" else None,
        }
    )


def _huge_body(progress_id: str, settings: SimSettings) -> bytes:
    fate = _fate(progress_id, settings)
    body = {
        "progress_id": progress_id,
        "session_id": fate.session_id,
        "mode": fate.mode,
        "status": "completed",
        "result": {"transcript": "x" * _HUGE_STRING},
        "error": None,
    }
    return orjson.dumps(body)


def _http_date(wall: float) -> str:
    """*wall* (Unix seconds) as an HTTP-date, rounded up: the format has whole seconds only."""
    return email.utils.format_datetime(datetime.fromtimestamp(math.ceil(wall), UTC), usegmt=True)


def _detail(text: str) -> bytes:
    return orjson.dumps({"detail": text})


_UNAUTHORIZED: Final = _detail("Invalid API key.")
_THROTTLED: Final = _detail("Request was throttled.")
_SERVER_ERROR: Final = _detail("Server error.")
_NOT_FOUND: Final = _detail("Not found.")
_UNAVAILABLE: Final = _detail("Service temporarily unavailable.")
_REQUIRED: Final = orjson.dumps({"progress_id": ["This field is required."]})
_BLANK: Final = orjson.dumps({"progress_id": ["This field may not be blank."]})
_INVALID: Final = orjson.dumps({"progress_id": ["Invalid progress id."]})


class _Gcra:
    """GCRA "virtual scheduling" policer: admit or refuse now, never queue."""

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        # A request may arrive up to (burst - 1) intervals ahead of its theoretical time; the
        # 1e-9 keeps float error from refusing a request that arrives exactly on time.
        self._tolerance = (burst - 1) * self._interval + 1e-9
        self._tat = float("-inf")  # theoretical arrival time of the next conforming request

    def admit(self, now: float) -> bool:
        tat = max(self._tat, now)
        if tat - now > self._tolerance:
            return False
        self._tat = tat + self._interval
        return True


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
        self._limiter = None if rate is None else _Gcra(rate, settings.rate_burst)
        self._faults = random.Random(settings.seed)
        # (kind, rate) for each fault that can happen: consecutive slices of one draw in [0, 1).
        self._fault_slices = tuple((kind, r) for kind, r in _fault_rates(settings) if r > 0)
        self._garbage_turn = 0  # which unusable body the next garbage fault sends
        self._retry_forms = _retry_forms(settings)
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
        # Draw only when there is a choice, so one form leaves the fault sequence as it was.
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
        if pid.startswith("notfound-"):
            return self._reply(404, _NOT_FOUND)
        if pid.startswith(("reject-", "redirect-")):
            return self._reply(400, _INVALID)
        if pid.startswith("flaky-"):
            return self._reply(503, _UNAVAILABLE)
        if pid.startswith("huge-"):
            return self._reply(200, _huge_body(pid, s))
        if pid.startswith("list-"):
            return self._reply(200, b"[]")
        return self._reply(200, _progress_body(pid, s, polls))

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
        return _progress_body(pid, self.settings, self.stats.polls_by_id.get(pid, 0))

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


def _loopback(host: str) -> str:
    """*host* as an address to bind, or ValueError if it is not a loopback address."""
    host = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the simulator binds loopback only (127.0.0.1 or ::1), not {host!r}")


_DEFAULT_SETTINGS: Final = SimSettings()


@asynccontextmanager
async def running_simulator(
    settings: SimSettings = _DEFAULT_SETTINGS, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """Serve *settings* on loopback (port 0 = a free port) for the ``async with`` block.

    Raises ValueError for a non-loopback *host*. A client hanging up cancels its request's
    handler, and exit does not wait for requests still sleeping in ``latency``.
    """
    host = _loopback(host)
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


async def _serve_until_signal(settings: SimSettings, host: str, port: int) -> None:
    # Listen for signals before binding, so one sent right after the banner is not lost.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with running_simulator(settings, host=host, port=port) as sim:
            print(f"simulator listening on {sim.url}", file=sys.stderr, flush=True)
            async for _ in signals:
                break


def serve(settings: SimSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until SIGINT or SIGTERM, then return; ValueError for a non-loopback *host*."""
    anyio.run(_serve_until_signal, settings, _loopback(host), port)


def add_knobs(parser: argparse.ArgumentParser) -> None:
    """The ``batchpoll simulate`` options that set ``SimSettings``."""
    d = _DEFAULT_SETTINGS
    parser.add_argument("--seed", type=int, default=d.seed, help="fixes every id's fate")
    parser.add_argument(
        "--api-key-file", metavar="PATH", help="answer 401 unless requests carry this key"
    )
    parser.add_argument(
        "--unauthorized-after",
        type=int,
        default=None,
        metavar="N",
        help="answer 401 to every request after the first N (a key revoked mid-run)",
    )
    parser.add_argument("--min-polls", type=int, default=d.min_polls, metavar="K")
    parser.add_argument("--max-polls", type=int, default=d.max_polls, metavar="K")
    parser.add_argument("--pending", action="store_true", help="every id stays in progress")
    parser.add_argument("--latency", type=float, default=d.latency, metavar="S")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="R", help="429 above R/s")
    parser.add_argument("--rate-burst", type=int, default=d.rate_burst, metavar="B")
    parser.add_argument(
        "--retry-after",
        default=d.retry_after,
        metavar="FORMS",
        help="Retry-After of 429s, one picked per 429 from a comma list of delta-seconds, "
        "'date' and 'none' (e.g. 1,date,none)",
    )
    parser.add_argument("--no-retry-after", action="store_true", help="429s without Retry-After")
    for kind, what in (
        ("error", "500/502/503"),
        ("drop", "connection aborted without a response"),
        ("truncate", "200 cut short of its Content-Length"),
        ("slow", "200 stalling --slow-body-s halfway through its body"),
        ("garbage", "200 with an unusable body"),
        ("throttle", "429 regardless of --rate-limit"),
    ):
        parser.add_argument(
            f"--{kind}-rate",
            type=float,
            default=0.0,
            metavar="F",
            help=f"fraction of requests answered with a fault: {what}",
        )
    parser.add_argument("--slow-body-s", type=float, default=d.slow_body_s, metavar="S")
    parser.add_argument(
        "--redirect-url",
        default=None,
        metavar="URL",
        help="loopback http base URL that redirect- ids are sent to with a 302",
    )


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """``SimSettings`` from ``add_knobs``' options; ValueError for values that cannot work."""
    key = None
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            name = shown(args.api_key_file)
            raise ValueError(f"--api-key-file {name}: cannot read: {exc.strerror}") from None
    # --no-retry-after wins, as it always has; "none" is the form for "no header".
    forms = ("none",) if args.no_retry_after else tuple(args.retry_after.split(","))
    if bad := [form for form in forms if not _RETRY_FORM.fullmatch(form)]:
        # Checked here too, to name the bad forms as shown: a long list is only counted.
        raise ValueError(
            f"--retry-after: forms are delta-seconds, 'date' or 'none'; not {shown(bad)}"
        )
    return SimSettings(
        seed=args.seed,
        api_key=key,
        unauthorized_after=args.unauthorized_after,
        min_polls=args.min_polls,
        max_polls=args.max_polls,
        pending=args.pending,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        retry_after_forms=forms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        slow_rate=args.slow_rate,
        slow_body_s=args.slow_body_s,
        garbage_rate=args.garbage_rate,
        throttle_rate=args.throttle_rate,
        redirect_url=args.redirect_url,
    )
