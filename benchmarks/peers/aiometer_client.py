"""aiometer's way: `amap` one poll per id with `max_at_once` and `max_per_second`, in rounds.

amap runs a function over a sequence, so polling becomes rounds: poll every pending id once
(at most `concurrency` at once, at most `rate` per second), wait `interval`, repeat with the
ids still in progress. aiometer's meter allows no burst, so --burst is accepted and
ignored. Requests go through aiohttp, like batchpoll's, so the difference
measured is the scheduling. Stdlib event loop, as aiometer's users run it.
"""

from __future__ import annotations

import asyncio
import functools
import json

import aiohttp
import aiometer
from _common import parse_args, read_ids


async def poll_once(session, url, pid):  # type: ignore[no-untyped-def]
    async with session.get(url, params={"progress_id": pid}) as resp:
        return pid, json.loads(await resp.read())["status"]


async def main(args, pending, out) -> None:  # type: ignore[no-untyped-def]
    headers = {"X-CEKURA-API-KEY": args.key}
    async with aiohttp.ClientSession(headers=headers) as session:
        poll = functools.partial(poll_once, session, args.url)
        while pending:
            still = []
            async with aiometer.amap(
                poll, pending, max_at_once=args.concurrency, max_per_second=args.rate
            ) as results:
                async for pid, status in results:
                    if status == "in_progress":
                        still.append(pid)
                    else:
                        out.write(json.dumps({"progress_id": pid, "status": status}) + "\n")
            pending = still
            if pending:
                await asyncio.sleep(args.interval)


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], rate=True)
    with open(args.output, "w", encoding="utf-8") as out:
        asyncio.run(main(args, read_ids(args.ids), out))
