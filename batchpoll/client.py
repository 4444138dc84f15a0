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
_MAX_REDIRECTS: Final = 3
_KEY_HEADER: Final = "X-CEKURA-API-KEY"
_JSON: Final = "application/json"


def classify(
    status: int, body: bytes, retry_after: str | None, *, wall: float, content_type: str = _JSON
) -> Outcome:
    """Map one HTTP answer (status, body, headers) to an outcome; 401/403 raise in the caller."""
    match status:
        case 200 if "json" not in content_type:
            # An HTML error page from a proxy is not an answer, even if it parses.
            return Transient(reason=f"unreadable body: content type {content_type or 'missing'}")
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

    async def __aenter__(self) -> Self:
        s = self._settings
        # The engine's worker pool is the only queue: with the connector's limits equal to it,
        # a request never waits for a pooled connection, so timing an attempt is fair.
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=s.concurrency)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=s.request_timeout, sock_read=s.request_timeout
        )
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
        if self._session is not None:
            await self._session.close()

    async def poll(self, progress_id: str) -> Outcome:
        """One attempt (following same-origin redirects), timed from here, as an outcome."""
        try:
            # asyncio's own timeout, not anyio's: aiohttp runs only on asyncio anyway, and
            # this is the hot path (an anyio cancel scope costs several times as much).
            async with asyncio.timeout(self._settings.request_timeout):
                return await self._attempt(progress_id)
        except TimeoutError:
            return Transient(reason=f"timeout after {self._settings.request_timeout:g}s")
        except aiohttp.ClientError as exc:
            return Transient(reason=f"{type(exc).__name__}: {exc}".rstrip(": "))
        except OSError as exc:
            return Transient(reason=f"{type(exc).__name__}: {exc.strerror or exc}")

    async def _attempt(self, progress_id: str) -> Outcome:
        assert self._session is not None, "use ApiClient as an async context manager"
        # Encoded once by hand: every reserved character percent-escaped, so the server sees
        # the exact id; cheaper than yarl building a query from a mapping on every poll.
        url = URL(self._prefix + quote(progress_id, safe=""), encoded=True)
        for _ in range(_MAX_REDIRECTS + 1):
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status in (401, 403):
                    raise AuthRefused(resp.status, self._settings.api_key_source)
                location = resp.headers.get("Location")
                if 300 <= resp.status < 400 and location:
                    target = url.join(URL(location))
                    if _origin(target) != self._origin:
                        # aiohttp strips only Authorization/Cookie across origins, so our
                        # custom key header would follow; never let it leave the origin.
                        return Broken(
                            reason=f"HTTP {resp.status} redirect to another origin "
                            f"({target.origin()}) not followed: the API key stays with base_url"
                        )
                    url = target
                    continue
                body = await _read_capped(resp)
                if body is None:
                    return Transient(reason=f"unreadable body: larger than {MAX_BODY} bytes")
                return classify(
                    resp.status,
                    body,
                    resp.headers.get("Retry-After"),
                    wall=time.time(),
                    content_type=resp.content_type,
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
