"""From what a server sends to values batchpoll can hold and write, with bounded memory.

Two guards sit at the HTTP boundary so that no answer can exhaust memory or break the sink:

* ``read_capped`` bounds the *decoded* size of a body. aiohttp inflates gzip and deflate (and br
  or zstd when their libraries are installed) as the body is consumed, so a small compressed
  body can stand for gigabytes; reading it chunk by chunk and stopping at ``MAX_BODY`` keeps each
  request to about one cap of memory, whatever Content-Length and Content-Encoding claim.
* ``unwritable`` and ``clip`` make sure what we keep from a body (a ``result`` passed through,
  the API's strings, failure reasons) can be written by ``orjson.dumps``, which refuses some
  values ``orjson.loads`` accepts: containers nested deeper than it recurses, and strings with
  lone surrogates (which an exception's text can carry from a header decoded with
  ``surrogateescape``).
"""

from __future__ import annotations

from typing import Final

import aiohttp
import orjson

#: Bodies are not read past this many decoded bytes; a progress answer is a few KiB at most.
MAX_BODY: Final = 10 * 1024 * 1024
#: The longest string kept from an answer (an error, a mode, a status, a 400's messages).
MAX_TEXT: Final = 10_000
#: The longest failure reason kept; reasons are one line in a record and a log event.
MAX_REASON: Final = 1_000
#: Most characters kept of a ``status`` or ``mode``: words, kept for every waiting id.
MAX_WORD: Final = 200
_CHUNK: Final = 64 * 1024


async def read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    """The whole decoded body, or ``None`` once it passes ``MAX_BODY`` bytes (the rest unread).

    A declared Content-Length bounds the bytes on the wire only, so it licenses the one-shot
    ``read()`` (the common, cheapest case) only for a body without Content-Encoding. Any other
    body is read in chunks as aiohttp decodes it, counting the decoded bytes; aiohttp stops
    reading the socket while a decoded chunk waits, so memory stays near ``MAX_BODY`` per request.
    """
    length = resp.content_length
    if length is not None and length > MAX_BODY:
        return None
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def unwritable(value: object) -> str | None:
    """Why ``orjson.dumps`` cannot write *value* (a parsed JSON value), or ``None`` if it can.

    Only containers are dumped to find out: every scalar ``orjson.loads`` returns can be
    written (its integers fit 64 bits, bigger ones come back as floats, and it rejects
    infinities, lone surrogates and invalid UTF-8 itself).
    """
    if not isinstance(value, dict | list):
        return None
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return str(exc)
    return None


def as_text(value: object) -> str:
    """A parsed JSON value as one string: itself if a string, else its JSON (or a stand-in)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # str() would recurse as deep as the value, and Python's repr gives up near 1000 levels.
        return f"<{type(value).__name__} too deeply nested to show>"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """*text* cut to *limit* characters with a marker saying how much went, and made writable.

    Lone surrogates become ``\\udcxx`` escapes rather than failing the record they end up in.
    """
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters cut]"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode()
    return text
