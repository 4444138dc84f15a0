"""A loopback HTTP/1.1 server that sends whatever bytes a test gives it, however wrong.

aiohttp's own server refuses to send much of what a hostile or broken server might (a
malformed status line, a lying Content-Length, a body that is not the encoding it claims), so
the client's boundary is tested against raw bytes on an ``asyncio`` stream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

#: Longest request head read before answering; the client sends a few hundred bytes.
_MAX_HEAD = 64 * 1024


class RawServer:
    """Answers each connection's first request with ``response``, then closes the connection.

    ``response`` may be swapped between requests, so one server serves many test examples.
    ``requests`` counts the request heads received.
    """

    def __init__(self) -> None:
        self.response = b"HTTP/1.1 204 No Content\r\n\r\n"
        self.requests = 0
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            # Read the whole head first: closing with unread bytes would make the kernel reset
            # the connection, and the client would see a reset instead of our answer.
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests += 1
            writer.write(self.response)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client gave up first: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[RawServer]:
    """A ``RawServer`` listening on 127.0.0.1 at a free port; ``url`` is its base URL."""
    server = RawServer()
    listener = await asyncio.start_server(server._handle, "127.0.0.1", 0, limit=_MAX_HEAD)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        for writer in list(server._writers):
            writer.close()
        await listener.wait_closed()


def response(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    reason: str = "X",
    length: bool = True,
) -> bytes:
    """The bytes of one answer: a status line, *headers*, Content-Length (if *length*), *body*."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body
