"""A lean fake of the Cekura progress endpoint, for benchmarks only (not `batchpoll simulate`).

    python benchmarks/server.py [--port 0] [--polls P | --pending] [--record N] [--core C]

GET /test_framework/v1/scenarios/scenario-agent-progress/?progress_id=ID answers 200 JSON:
`in_progress` for an id's first P-1 polls, then `completed` (always `in_progress` with
--pending). The key is not checked. Control endpoints, for the harness:

    GET  /__bench/stats[?windows=1]   requests, distinct ids, server CPU s, arrival-rate stats
    POST /__bench/reset[?polls=P|pending=1]   forget every id and arrival; set the mode

It prints `listening http://127.0.0.1:PORT` on stdout once it accepts requests. aiohttp's
low-level `web.Server` skips the router and middlewares: the server must never be the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from array import array

import orjson
from aiohttp import web

PATH = "/test_framework/v1/scenarios/scenario-agent-progress/"
# The body is built by concatenation: one orjson call for the id, the rest is constant.
HEAD = b'{"progress_id":'
TAIL = {
    True: b',"session_id":1,"mode":"improve","status":"completed","result":null,"error":null}',
    False: b',"session_id":1,"mode":"improve","status":"in_progress","result":null,"error":null}',
}


class State:
    """Per-id poll counts and the arrival time of every request, preallocated.

    `arrivals` is an array of doubles sized once at start (--record) so recording costs one
    store and no allocation; requests past its end are counted but their time is dropped.
    """

    def __init__(self, polls: int, pending: bool, record: int) -> None:
        self.polls, self.pending = polls, pending
        self.counts: dict[str, int] = {}
        self.arrivals = array("d", bytes(8 * record))
        self.n = 0

    def reset(self, polls: int, pending: bool) -> None:
        self.polls, self.pending = polls, pending
        self.counts = {}
        self.n = 0

    def stats(self, windows: bool) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        kept = min(self.n, len(self.arrivals))
        out: dict[str, object] = {
            "requests": self.n,
            "ids": len(self.counts),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "recorded": kept,
        }
        if kept >= 2:
            first, last = self.arrivals[0], self.arrivals[kept - 1]
            out["busy_s"] = last - first
            out["busy_rate"] = (kept - 1) / (last - first) if last > first else None
        if windows and kept:
            out["max_1s"] = max_in_window(self.arrivals, kept, 1.0)
        return out


def max_in_window(times: array[float], n: int, width: float) -> int:
    """Most arrivals in any half-open window of *width* seconds (times are non-decreasing)."""
    best, lo = 0, 0
    for hi in range(n):
        while times[hi] - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def make_handler(state: State):  # type: ignore[no-untyped-def]
    clock = time.monotonic

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == PATH:
            n = state.n
            if n < len(state.arrivals):
                state.arrivals[n] = clock()
            state.n = n + 1
            pid = request.query.get("progress_id", "")
            seen = state.counts.get(pid, 0) + 1
            state.counts[pid] = seen
            done = not state.pending and seen >= state.polls
            body = HEAD + orjson.dumps(pid) + TAIL[done]
            return web.Response(body=body, content_type="application/json")
        if path == "/__bench/stats":
            windows = request.query.get("windows") == "1"
            return web.Response(
                body=orjson.dumps(state.stats(windows)), content_type="application/json"
            )
        if path == "/__bench/reset" and request.method == "POST":
            q = request.query
            state.reset(int(q.get("polls", state.polls)), q.get("pending", "0") == "1")
            return web.Response(body=b'{"ok":true}', content_type="application/json")
        return web.Response(status=404)

    return handle


async def serve(args: argparse.Namespace) -> None:
    state = State(args.polls, args.pending, args.record)
    runner = web.ServerRunner(web.Server(make_handler(state), access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening http://127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()  # until SIGTERM/SIGINT ends the loop
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--polls", type=int, default=3, help="polls until completed (P)")
    p.add_argument("--pending", action="store_true", help="every id stays in_progress")
    p.add_argument("--record", type=int, default=4_000_000, help="arrival times kept")
    p.add_argument("--core", type=int, help="pin this process to one CPU core")
    args = p.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    try:
        import uvloop
    except ImportError:  # still correct without it, only slower; the harness reports the loop
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
