"""The poller a user writes first: one task per id, a semaphore, aiohttp, json, asyncio.sleep.

Deliberately plain (stdlib event loop, `json.loads`, a coroutine per id parked in
`asyncio.gather`), because that is the baseline batchpoll has to beat. No rate limit.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from _common import parse_args, read_ids


async def poll(session, sem, pid, args, out):  # type: ignore[no-untyped-def]
    while True:
        async with sem, session.get(args.url, params={"progress_id": pid}) as resp:
            body = json.loads(await resp.text())
        if body["status"] != "in_progress":
            out.write(json.dumps({"progress_id": pid, "status": body["status"]}) + "\n")
            return
        await asyncio.sleep(args.interval)


async def main(args, ids, out) -> None:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(args.concurrency)
    headers = {"X-CEKURA-API-KEY": args.key}
    async with aiohttp.ClientSession(headers=headers) as session:
        await asyncio.gather(*(poll(session, sem, pid, args, out) for pid in ids))


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], rate=False)
    with open(args.output, "w", encoding="utf-8") as out:
        asyncio.run(main(args, read_ids(args.ids), out))
