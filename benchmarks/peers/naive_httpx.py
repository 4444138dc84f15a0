"""The naive loop of naive_aiohttp.py on `httpx.AsyncClient`, as the official Cekura SDK sends.

One difference on purpose: the pool keeps `concurrency` connections alive (httpx keeps only
20 by default), so httpx is not charged for reconnecting. No rate limit.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from _common import parse_args, read_ids


async def poll(client, sem, pid, args, out):  # type: ignore[no-untyped-def]
    while True:
        async with sem:
            resp = await client.get(args.url, params={"progress_id": pid})
            body = json.loads(resp.content)
        if body["status"] != "in_progress":
            out.write(json.dumps({"progress_id": pid, "status": body["status"]}) + "\n")
            return
        await asyncio.sleep(args.interval)


async def main(args, ids, out) -> None:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    headers = {"X-CEKURA-API-KEY": args.key}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        await asyncio.gather(*(poll(client, sem, pid, args, out) for pid in ids))


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], rate=False)
    with open(args.output, "w", encoding="utf-8") as out:
        asyncio.run(main(args, read_ids(args.ids), out))
