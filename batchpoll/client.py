"""The HTTP boundary: one aiohttp session, and every answer or failure mapped to an ``Outcome``.

This is the only module that imports aiohttp (besides the simulator). Nothing aiohttp raises
leaves ``ApiClient.poll``: a response becomes ``classify``'s outcome, an exception a
``Transient``; only ``AuthRefused`` escapes, because a refused key ends the whole run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from .backoff import parse_retry_after
from .config import Settings
from .errors import AuthRefused
from .records import Answer, Broken, NotFound, Outcome, Rejected, Throttled, Transient

#: Bodies beyond this are not read further; a progress answer is a few KiB at most.
MAX_BODY: Final = 10 * 1024 * 1024
#: How often overdue requests are looked for, as a share of the request timeout (and at most
#: once a second): a request is abandoned between 1 and 1 + 1/8 timeouts after it started.
_WATCH_SHARE: Final = 8
_MAX_REDIRECTS: Final = 3
_KEY_HEADER: Final = "X-CEKURA-API-KEY"
_JSON: Final = "application/json"


def classify(
    status: int, body: bytes, retry_after: str | None, *, wall: float, content_type: str = _JSON
) -> Outcome:
    """Map one HTTP answer (status, body, headers) to an outcome; 401/403 raise in the caller."""
    match status:
        # The raw header; lowercased only in the rare case that it lacks a lowercase "json".
        case 200 if "json" not in content_type and "json" not in content_type.lower():
            # An HTML error page from a proxy is not an answer, even if it parses.
            media_type = content_type.partition(";")[0].strip()
            return Transient(reason=f"unreadable body: content type {media_type or 'missing'}")
        case 200:
            return parse_progress(body)
        case 400:
            return Rejected(messages=field_messages(body))
        case 404:
            return NotFound()
        case 429 | 503 if retry_after is not None or status == 429:
            wait = parse_retry_after(retry_after, now=wall) if retry_after is not None else None
            return Throttled(retry_after=wait, reason=f"HTTP {status}")
        case _ if 300 <= status < 400:
            return Broken(reason=f"HTTP {status} redirect without a usable Location")
        case _:
            return Transient(reason=f"HTTP {status}")


def parse_progress(body: bytes) -> Outcome:
    """A 200 body as an ``Answer``; anything but the documented object is a transient failure."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Transient(reason="unreadable body: not JSON")
    if not isinstance(data, dict):
        return Transient(reason="unreadable body: JSON is not an object")
    status = data.get("status")
    session_id = data.get("session_id")
    mode = data.get("mode")
    error = data.get("error")
    if not isinstance(status, str):
        return Transient(reason="unreadable body: no string status")
    if session_id is not None and (not isinstance(session_id, int) or isinstance(session_id, bool)):
        session_id = None
    # Interned: 100k waiting ids would otherwise hold 100k copies of "in_progress".
    return Answer(
        status=sys.intern(status),
        mode=sys.intern(mode) if isinstance(mode, str) else None,
        session_id=session_id,
        result=data.get("result"),
        error=error if isinstance(error, str) or error is None else str(error),
    )


def field_messages(body: bytes) -> str:
    """A 400 body ``{"field": ["message", ...]}`` as one line: ``field: message; ...``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace") or "HTTP 400"
    if not isinstance(data, dict):
        return str(data)[:500]
    parts = []
    for field, messages in data.items():
        text = "; ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
        parts.append(f"{field}: {text}")
    return " | ".join(parts) or "HTTP 400"


def _origin(url: URL) -> tuple[str | None, str | None, int | None]:
    return url.scheme, url.host, url.port


class _Watchdog:
    """Request timeouts without a timer per request.

    ``asyncio.timeout`` (or aiohttp's ``total``/``sock_read``) arms and disarms an event-loop
    timer on every request, which at thousands of polls a second is a good share of the
    client's CPU. Instead each attempt notes when it started, and one repeating check cancels
    the tasks whose attempt is overdue, exactly as ``asyncio.timeout`` cancels: ``Task.cancel``
    now, ``Task.uncancel`` in ``poll`` to turn it into a timeout unless someone else also
    cancelled the task.
    """

    __slots__ = ("_handle", "_tick", "_timeout", "clock", "expired", "loop", "started")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._tick = min(1.0, timeout / _WATCH_SHARE)
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        #: Each running attempt's task and the loop time it started.
        self.started: dict[asyncio.Task[object], float] = {}
        #: Tasks this watchdog cancelled and that have not yet seen it.
        self.expired: set[asyncio.Task[object]] = set()
        self._handle = self.loop.call_later(self._tick, self._check)

    def _check(self) -> None:
        cutoff = self.clock() - self._timeout
        for task, started in self.started.items():
            if started <= cutoff and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        self._handle = self.loop.call_later(self._tick, self._check)

    def close(self) -> None:
        self._handle.cancel()


class ApiClient:
    """One keep-alive session for a whole run; ``poll`` is safe to call from many tasks."""

    def __init__(self, settings: Settings) -> None:
        if settings.api_key is None:
            raise ValueError("ApiClient needs settings.api_key")
        self._settings = settings
        self._url = URL(settings.base_url.rstrip("/") + settings.path)
        self._prefix = str(self._url) + "?progress_id="
        self._origin = _origin(self._url)
        self._headers = {_KEY_HEADER: settings.api_key.reveal(), "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self._watchdog: _Watchdog | None = None

    async def __aenter__(self) -> Self:
        s = self._settings
        # The engine's worker pool is the only queue: with the connector's limit equal to it,
        # a request never waits for a pooled connection, so timing an attempt is fair. Every
        # request goes to one origin, so a per-host limit would only add bookkeeping.
        connector = aiohttp.TCPConnector(limit=s.concurrency)
        # Only connecting has aiohttp's own timeout: the watchdog times each whole attempt.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.request_timeout)
        self._watchdog = _Watchdog(s.request_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers, raise_for_status=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
        if self._session is not None:
            await self._session.close()

    async def poll(self, progress_id: str) -> Outcome:
        """One attempt (following same-origin redirects), timed from here, as an outcome."""
        watchdog = self._watchdog
        assert watchdog is not None, "use ApiClient as an async context manager"
        # With the loop given, current_task skips get_running_loop's getpid() system call.
        task = asyncio.current_task(watchdog.loop)
        assert task is not None
        cancelling = task.cancelling()
        watchdog.started[task] = watchdog.clock()
        try:
            return await self._attempt(progress_id)
        except asyncio.CancelledError:
            if task not in watchdog.expired:
                raise
            watchdog.expired.discard(task)
            if task.uncancel() > cancelling:
                raise  # cancelled from outside too: that wins, as with asyncio.timeout
            return Transient(reason=f"timeout after {self._settings.request_timeout:g}s")
        except aiohttp.ClientError as exc:
            return Transient(reason=f"{type(exc).__name__}: {exc}".rstrip(": "))
        except OSError as exc:
            return Transient(reason=f"{type(exc).__name__}: {exc.strerror or exc}")
        finally:
            del watchdog.started[task]
            if watchdog.expired and task in watchdog.expired:
                # Cancelled as it finished, and something swallowed it: undo the cancel.
                watchdog.expired.discard(task)
                task.uncancel()

    async def _attempt(self, progress_id: str) -> Outcome:
        assert self._session is not None, "use ApiClient as an async context manager"
        # Encoded once by hand: every reserved character percent-escaped, so the server sees
        # the exact id; cheaper than yarl building a query from a mapping on every poll.
        url = URL(self._prefix + quote(progress_id, safe=""), encoded=True)
        for _ in range(_MAX_REDIRECTS + 1):
            async with self._session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status in (401, 403):
                    raise AuthRefused(status, self._settings.api_key_source)
                if 300 <= status < 400 and (location := resp.headers.get("Location")):
                    target = url.join(URL(location))
                    if _origin(target) != self._origin:
                        # aiohttp strips only Authorization/Cookie across origins, so our
                        # custom key header would follow; never let it leave the origin.
                        return Broken(
                            reason=f"HTTP {status} redirect to another origin "
                            f"({target.origin()}) not followed: the API key stays with base_url"
                        )
                    url = target
                    continue
                body = await _read_capped(resp)
                if body is None:
                    return Transient(reason=f"unreadable body: larger than {MAX_BODY} bytes")
                headers = resp.headers
                return classify(
                    status,
                    body,
                    headers.get("Retry-After") if status in (429, 503) else None,
                    wall=time.time(),
                    # The raw header: aiohttp's parsed content_type costs more than this check.
                    content_type=headers.get("Content-Type", ""),
                )
        return Broken(reason=f"more than {_MAX_REDIRECTS} redirects")


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or ``None`` once it passes ``MAX_BODY`` (the rest is never read)."""
    length = resp.content_length
    if length is not None:
        # A declared length within the cap is the common case; read it in one go.
        return None if length > MAX_BODY else await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
