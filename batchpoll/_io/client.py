"""The HTTP boundary: one aiohttp session, and every answer or failure mapped to an ``Outcome``.

This is the only module that talks HTTP (besides the simulator; ``body`` reads the bytes).
Nothing a server sends and nothing raised while talking to it leaves ``ApiClient.poll``: a
response becomes ``classify``'s outcome, an exception a ``Transient`` naming its class; only
``AuthRefused`` escapes, because a refused key ends the whole run (and cancellation, which is
not ours to swallow).
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

from .._core.backoff import parse_retry_after
from .._core.config import Settings
from .._core.redact import mask_text
from ..errors import AuthRefused
from ..records import Answer, Broken, NotFound, Outcome, Rejected, Throttled, Transient
from .body import MAX_BODY, MAX_REASON, MAX_TEXT, MAX_WORD, as_text, clip, read_capped, unwritable

#: How often overdue requests are looked for, as a share of the request timeout (and at most
#: once a second): a request is abandoned between 1 and 1 + 1/8 timeouts after it started.
_WATCH_SHARE: Final = 8
_MAX_REDIRECTS: Final = 3
_KEY_HEADER: Final = "X-CEKURA-API-KEY"
_JSON: Final = "application/json"
# session_id is kept only if it fits a signed 64-bit integer, what JSON readers can all hold.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def classify(
    status: int,
    body: bytes,
    retry_after: str | None,
    *,
    wall: float,
    content_type: str = _JSON,
    secret: str | None = None,
) -> Outcome:
    """Map one HTTP answer (status, body, headers) to an outcome; 401/403 raise in the caller.

    *secret*, the API key, is masked out of every text taken from the answer before any of it
    is cut short, so that no cut leaves a piece of it behind.
    """
    match status:
        # The raw header; lowercased only in the rare case that it lacks a lowercase "json".
        case 200 if "json" not in content_type and "json" not in content_type.lower():
            # An HTML error page from a proxy is not an answer, even if it parses.
            # Clipped: the header is the server's text, decoded with surrogateescape.
            media_type = clip(mask_text(content_type.partition(";")[0].strip(), secret), 200)
            return Transient(reason=f"unreadable body: content type {media_type or 'missing'}")
        case 200:
            return parse_progress(body, secret)
        case 400:
            return Rejected(messages=field_messages(body, secret))
        case 404:
            return NotFound()
        case 429 | 503 if retry_after is not None or status == 429:
            wait = parse_retry_after(retry_after, now=wall) if retry_after is not None else None
            return Throttled(retry_after=wait, reason=f"HTTP {status}")
        case _ if 300 <= status < 400:
            return Broken(reason=f"HTTP {status} redirect without a usable Location")
        case _:
            return Transient(reason=f"HTTP {status}")


def parse_progress(body: bytes, secret: str | None = None) -> Outcome:
    """A 200 body as an ``Answer``; anything but the documented object is a transient failure.

    What the ``Answer`` holds can always be written as JSON: a ``result`` that cannot is
    ``Broken``, strings are clipped to ``MAX_TEXT``, and an odd ``session_id`` becomes None.
    """
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
    result = data.get("result")
    if not isinstance(status, str):
        return Transient(reason="unreadable body: no string status")
    # The common in-progress answer has no result and pays for no dumps here.
    if result is not None and (problem := unwritable(result)) is not None:
        return Broken(reason=f"unreadable body: result cannot be written as JSON: {problem}")
    # Strings orjson.loads returns are valid UTF-8, so only their length needs a check; inline
    # tests, not a call per field, as this runs on every poll. What is cut has the key masked
    # first, so no cut leaves a piece of it; whole occurrences are the sink's to mask.
    if len(status) > MAX_WORD:
        status = clip(mask_text(status, secret), MAX_WORD)
    if not isinstance(mode, str):
        mode = None
    elif len(mode) > MAX_WORD:
        mode = clip(mask_text(mode, secret), MAX_WORD)
    if error is not None and (type(error) is not str or len(error) > MAX_TEXT):
        error = clip(mask_text(as_text(error), secret))
    # type(), not isinstance(): bool is an int subclass.
    if session_id is not None and (
        type(session_id) is not int or not _INT64_MIN <= session_id <= _INT64_MAX
    ):
        session_id = None
    # Interned: 100k waiting ids would otherwise hold 100k copies of "in_progress".
    return Answer(
        status=sys.intern(status),
        mode=None if mode is None else sys.intern(mode),
        session_id=session_id,
        result=result,
        error=error,
    )


def field_messages(body: bytes, secret: str | None = None) -> str:
    """A 400 body ``{"field": ["message", ...]}`` as one line: ``field: message; ...``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = mask_text(body[: 500 + 4 * len(secret or "")].decode("utf-8", "replace"), secret)
        return clip(text[:500]) or "HTTP 400"
    if not isinstance(data, dict):
        return clip(mask_text(as_text(data), secret)[:500])
    parts = []
    for field, messages in data.items():
        if isinstance(messages, list):
            text = "; ".join(map(as_text, messages))
        else:
            text = as_text(messages)
        parts.append(f"{field}: {text}")
    return clip(mask_text(" | ".join(parts), secret)) or "HTTP 400"


def _failure(exc: BaseException, secret: str | None) -> str:
    """An unexpected exception as a reason: its class, then its message, clipped and writable."""
    try:
        message = mask_text(str(exc), secret)
    except Exception:  # a broken __str__ must not break the boundary that reports it
        message = ""
    # One line: aiohttp's messages can span several.
    return clip(f"{type(exc).__name__}: {' '.join(message.split())}".rstrip(": "), MAX_REASON)


def _redirect_target(url: URL, location: str) -> URL | None:
    """Where a Location sends us, or None if it cannot be parsed, joined or requested."""
    try:
        target = url.join(URL(location))
        _origin(target)  # yarl checks the port only when asked for it
        str(target).encode("ascii")  # what would go on the request line
    except ValueError:  # UnicodeError is one
        return None
    return target


def _shown_origin(url: URL, secret: str | None) -> str:
    """*url*'s origin for a message; yarl refuses one for a URL without a host (``mailto:x``).

    The host is the server's text, lowercased by yarl: a key in it is masked in any case.
    """
    try:
        return clip(mask_text(str(url.origin()), secret), 200)
    except ValueError:
        return clip(mask_text(f"{url.scheme}:", secret), 200)


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
        self._secret = settings.api_key.reveal()
        self._headers = {_KEY_HEADER: self._secret, "Accept": "application/json"}
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
        except AuthRefused:
            raise
        except aiohttp.ClientError as exc:
            return Transient(reason=_failure(exc, self._secret))
        except OSError as exc:
            return Transient(
                reason=clip(
                    mask_text(f"{type(exc).__name__}: {exc.strerror or exc}", self._secret),
                    MAX_REASON,
                )
            )
        except Exception as exc:
            # Whatever else talking to a server can raise (ValueError, UnicodeError, LookupError,
            # aiohttp internals): this id's attempt failed, the run goes on.
            return Transient(reason=_failure(exc, self._secret))
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
                    target = _redirect_target(url, location)
                    if target is None:
                        return Broken(reason=f"HTTP {status} redirect with an unusable Location")
                    if _origin(target) != self._origin:
                        # aiohttp strips only Authorization/Cookie across origins, so our
                        # custom key header would follow; never let it leave the origin.
                        return Broken(
                            reason=f"HTTP {status} redirect to another origin "
                            f"({_shown_origin(target, self._secret)}) not followed: "
                            "the API key stays with base_url"
                        )
                    url = target
                    continue
                body = await read_capped(resp)
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
                    secret=self._secret,
                )
        return Broken(reason=f"more than {_MAX_REDIRECTS} redirects")
