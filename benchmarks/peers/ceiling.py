"""The ceiling: the fastest minimal poller we could write, with nothing batchpoll must have.

A fixed pool of `concurrency` workers over one aiohttp session, a FIFO of (due time, id)
(with a fixed interval, ids re-queued in order of completion are already in due order, so a
deque is the whole scheduler), orjson, an optional GCRA rate limit, no logs, no retries, no
timeouts, no records beyond one line per id, uvloop. batchpoll's throughput and CPU targets
are set against this client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import quote

import aiohttp
import orjson
from _common import parse_args, read_ids
from yarl import URL


class Gcra:
    """GCRA "virtual scheduling": tat is the theoretical arrival time of the next request."""

    def __init__(self, rate: float, burst: int) -> None:
        self.step, self.slack, self.tat = 1.0 / rate, (burst - 1) / rate, 0.0

    def reserve(self, now: float) -> float:
        """Book one request at *now*; return the seconds to wait before sending it."""
        tat = max(self.tat, now)
        self.tat = tat + self.step
        return max(0.0, tat - self.slack - now)


async def main(args, ids, out) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    due = deque((0.0, pid) for pid in ids)
    remaining = len(due)
    wake = asyncio.Event()  # set when an id is re-queued or the last id ends
    limiter = Gcra(args.rate, args.burst) if args.rate else None
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"X-CEKURA-API-KEY": args.key}
    # No timeout at all: aiohttp's default (300 s total) arms an event-loop timer on every
    # request, about a fifth of this client's CPU under uvloop.
    timeout = aiohttp.ClientTimeout(total=None)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining:
            if not due:
                wake.clear()
                await wake.wait()
                continue
            at, pid = due.popleft()
            if (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            if limiter and (wait := limiter.reserve(loop.time())) > 0:
                await asyncio.sleep(wait)
            # A pre-encoded URL skips yarl's query building and re-quoting.
            url = URL(f"{args.url}?progress_id={quote(pid, safe='')}", encoded=True)
            async with session.get(url) as resp:
                status = orjson.loads(await resp.read())["status"]
            if status == "in_progress":
                due.append((loop.time() + args.interval, pid))
            else:
                out.write(orjson.dumps({"progress_id": pid, "status": status}) + b"\n")
                remaining -= 1
            wake.set()

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))


if __name__ == "__main__":
    import uvloop

    args = parse_args(__doc__.splitlines()[0], rate=True)
    with open(args.output, "wb") as out:
        uvloop.run(main(args, read_ids(args.ids), out))
