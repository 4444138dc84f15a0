"""batchpoll side by side with its peers, in one run, on one machine (issue #5).

    python benchmarks/run.py [--quick] [--workloads a,b,c,d] [--clients batchpoll,ceiling,...]
                             [--rounds 3] [--out benchmarks/] [size flags, see --help]

Workloads: (a) A_IDS ids x A_POLLS polls, interval 0.01 s, no rate limit; (b) the same at
--b-rate; (c) C_SIZES ids all waiting at once (the server keeps them in progress), for RSS
per waiting id; (d) start-up. Clients run interleaved (A B C ... A B C ...) for --rounds
rounds and the tables show medians. The bench server (benchmarks/server.py) runs pinned to
one core and every client to another; both count and time requests server-side.

Writes OUT/results.md, OUT/results.json and (with matplotlib) OUT/results.png. Exits 1 if
any client did not finish every id in (a) or (b).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import figures
import orjson
import report
import startup
from clients import CLIENTS, Job, command
from procs import CpuMeter, Server, cores, machine, run_client

HERE = Path(__file__).resolve().parent

FULL = {
    "a_ids": 20_000,
    "a_polls": 3,
    "interval": 0.01,
    "concurrency": 64,
    "b_rate": 2000.0,
    "b_burst": 1,
    "c_sizes": "100000,1000000",
    "c_naive_max": 100_000,
    "c_interval": 5.0,
    "c_window": 20.0,
    "c_cap": 30.0,
    "c_stream_cap": 280.0,
    "c_base_window": 3.0,
    "rounds": 3,
    "b_rounds": 1,
    "c_rounds": 1,
    "httpx_ids": 2000,
    "d_runs": 10,
    "probe_s": 5.0,
    "run_timeout": 300.0,
    "budget": 1320.0,
}
# Tiny sizes for tests/test_bench_smoke.py: every path runs, nothing is timed for real.
QUICK = {
    **FULL,
    "a_ids": 200,
    "a_polls": 2,
    "c_sizes": "500",
    "c_window": 1.0,
    "c_cap": 3.0,
    "c_stream_cap": 3.0,
    "c_base_window": 0.0,
    "rounds": 1,
    "httpx_ids": 50,
    "d_runs": 1,
    "probe_s": 0.0,
    "run_timeout": 60.0,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes (a few seconds)")
    p.add_argument("--workloads", default="a,b,c,d")
    p.add_argument("--clients", default=",".join(CLIENTS), help="subset, comma-separated")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* go")
    p.add_argument(
        "--render",
        action="store_true",
        help="only rewrite OUT/results.md and .png from OUT/results.json",
    )
    p.add_argument("--rounds", type=int, help="rounds of (a)")
    p.add_argument("--b-rounds", type=int, help="rounds of (b), each the first of a round of (a)")
    p.add_argument("--c-rounds", type=int, help="rounds of (c): RSS varies little")
    p.add_argument("--a-ids", type=int)
    p.add_argument("--a-polls", type=int, help="polls until an id completes (P)")
    p.add_argument("--interval", type=float, help="seconds between polls in (a), (b)")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--b-rate", type=float)
    p.add_argument("--b-burst", type=int, help="burst for (b); aiometer allows none")
    p.add_argument("--httpx-ids", type=int, help="(a)/(b) ids for naive_httpx; 0: all")
    p.add_argument("--c-sizes", help="waiting-id counts, comma-separated")
    p.add_argument("--c-naive-max", type=int, help="largest (c) size for the naive peers")
    p.add_argument("--c-interval", type=float)
    p.add_argument("--c-window", type=float, help="seconds each (c) client runs at least")
    p.add_argument("--c-cap", type=float, help="(c) runs on until every id was polled, to this")
    p.add_argument(
        "--c-stream-cap",
        type=float,
        help="--c-cap for clients that read ids as they go (batchpoll): until every id is held",
    )
    p.add_argument("--c-base-window", type=float, help="seconds of the 1-id baseline runs")
    p.add_argument("--d-runs", type=int, help="start-up runs per command")
    p.add_argument("--probe-s", type=float, help="seconds of the wrk server probe; 0: none")
    p.add_argument("--run-timeout", type=float, help="most seconds for one client run")
    p.add_argument("--budget", type=float, help="skip runs that would start after this")
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    p.set_defaults(**(QUICK if quick else FULL))
    return p.parse_args(argv)


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_ids(path: Path, n: int) -> Path:
    with path.open("w") as f:
        f.writelines(f"job-{i:07d}\n" for i in range(n))
    return path


def finished_ids(out: Path) -> int:
    """Distinct ids with a terminal status in a client's output (one JSON line per id)."""
    if not out.exists():
        return 0
    done = set()
    for line in out.read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec.get("status") not in (None, "in_progress"):
            done.add(rec["progress_id"])
    return len(done)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.server_core, self.client_core = cores()
        self.server = Server(self.server_core, record=4_000_000)
        self.runs: list[dict[str, object]] = []
        self.skipped: list[str] = []
        self.t0 = time.monotonic()

    def over_budget(self, what: str) -> bool:
        if time.monotonic() - self.t0 > self.args.budget:
            self.skipped.append(what)
            note(f"  skipped {what}: over the {self.args.budget:.0f} s budget")
            return True
        return False

    def measure(
        self,
        workload: str,
        rnd: int,
        client: str,
        job: Job,
        n: int,
        *,
        windows: bool = False,
        stop: Callable[[float], bool] | None = None,
    ) -> None:
        """One client run, measured; appends a row to self.runs and prints it."""
        if self.over_budget(f"{workload}/{client}/round {rnd}"):
            return
        busy0, srv0 = CpuMeter.busy_s(), self.server.stats()["cpu_s"]
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        log = self.tmp / f"{client}.log"
        cmd = command(client, job)
        limit = max(self.args.run_timeout, (job.deadline or 0) + 20)
        ex = run_client(cmd, core=self.client_core, log=log, timeout=limit, stop=stop)
        busy1, self1 = CpuMeter.busy_s(), resource.getrusage(resource.RUSAGE_SELF)
        st = self.server.stats(windows=windows)
        srv_cpu = st["cpu_s"] - srv0
        mine = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
        row: dict[str, object] = {
            "workload": workload,
            "client": client,
            "round": rnd,
            "ids": n,
            "requests": int(st["requests"]),
            "polled": int(st["ids"]),
            "wall_s": ex.wall_s,
            "cpu_s": ex.cpu_s,
            "rss_kb": ex.rss_kb,
            "exit": ex.code,
            "stopped": ex.stopped,
            "finished": finished_ids(job.out),
            "server_cpu_pct": 100 * srv_cpu / ex.wall_s,
            # /proc/stat counts in clock ticks: clamp the rounding below zero away.
            "foreign_cpu_pct": max(
                0.0, 100 * (busy1 - busy0 - srv_cpu - ex.cpu_s - mine) / ex.wall_s
            ),
            "busy_rate": st.get("busy_rate"),
            "max_1s": st.get("max_1s"),
        }
        self.runs.append(row)
        job.out.unlink(missing_ok=True)
        note(f"  [{workload} r{rnd}] {client:14} {figures.one_line(row)}")
        if ex.code not in (0, 143, -15) and not ex.stopped:
            note(f"    exit {ex.code}; last log lines:\n" + tail(log))

    def throughput(self) -> None:
        """(a) and (b), interleaved: in each round, every client once per workload."""
        a = self.args
        ids = write_ids(self.tmp / "a.txt", a.a_ids)
        # naive_httpx gets the first --httpx-ids ids: at milliseconds per request, all of
        # them would take minutes a round (its per-request figures compare all the same).
        few = min(a.httpx_ids or a.a_ids, a.a_ids)
        ids_few = write_ids(self.tmp / "few.txt", few)
        for rnd in range(1, max(a.rounds, a.b_rounds) + 1):
            for w, rounds in (("a", a.rounds), ("b", a.b_rounds)):
                if w not in a.workloads or rnd > rounds:
                    continue
                for name in self.clients():
                    if w == "b" and not CLIENTS[name].rate:
                        continue
                    path, n = (ids_few, few) if name == "naive_httpx" else (ids, a.a_ids)
                    rate = a.b_rate if w == "b" else None
                    job = Job(path, self.tmp / "out", self.server.url, a.concurrency, a.interval)
                    job = replace(job, rate=rate, burst=a.b_burst)
                    self.server.reset(polls=a.a_polls)
                    self.measure(w, rnd, name, job, n, windows=w == "b")

    def waiting(self) -> None:
        """(c): peak RSS with every id waiting, minus the same client's with one id."""
        a = self.args
        one = write_ids(self.tmp / "one.txt", 1)
        for name in self.clients():
            job = Job(one, self.tmp / "out", self.server.url, a.concurrency, a.c_interval)
            self.server.reset(pending=True)
            stop = self.window_over(1, a.c_base_window, a.c_base_window + 30)
            self.measure("c1", 1, name, job, 1, stop=stop)
        for size in (int(s) for s in a.c_sizes.split(",") if s):
            ids = write_ids(self.tmp / f"c{size}.txt", size)
            for rnd in range(1, a.c_rounds + 1):
                for name in self.clients():
                    if size > a.c_naive_max and not CLIENTS[name].scales:
                        continue
                    # A client that reads ids as it goes holds an id only once it has read
                    # it; it runs on until every id was polled, so its figure is a verified
                    # per-waiting-id one. The others hold every id from the start.
                    cap = a.c_stream_cap if CLIENTS[name].streams else a.c_cap
                    job = Job(ids, self.tmp / "out", self.server.url, a.concurrency, a.c_interval)
                    job = replace(job, deadline=cap + 10)  # a backstop: the harness stops it
                    self.server.reset(pending=True)
                    stop = self.window_over(size, a.c_window, cap)
                    self.measure(f"c{size}", rnd, name, job, size, stop=stop)

    def window_over(self, size: int, window: float, cap: float) -> Callable[[float], bool]:
        """Stop after *window* s once every id was polled at least once, or at *cap* s."""
        last = [0.0]

        def stop(elapsed: float) -> bool:
            if elapsed < window:
                return False
            if elapsed >= cap:
                return True
            if elapsed - last[0] < 0.25:  # ask the server 4 times a second, not every 20 ms
                return False
            last[0] = elapsed
            return self.server.stats()["ids"] >= size

        return stop

    def clients(self) -> list[str]:
        return [c for c in self.args.clients.split(",") if c]


def tail(path: Path, lines: int = 5) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the server and a running client are stopped too (a
    # background shell job ignores SIGINT, and Python then leaves it ignored).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    if args.render:
        data = orjson.loads((args.out / "results.json").read_bytes())
        return 0 if report.write(args.out, data["runs"], data["meta"]) else 1
    args.workloads = set(args.workloads.split(","))
    wanted = [c for c in args.clients.split(",") if c]
    unknown = [c for c in wanted if c not in CLIENTS]
    if unknown:
        raise SystemExit(f"unknown clients: {unknown}; known: {list(CLIENTS)}")
    missing = [c for c in wanted if not CLIENTS[c].available()]
    args.clients = ",".join(c for c in wanted if c not in missing)
    started = time.monotonic()
    meta: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "args": {
            k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items() if k != "out"
        },
        "missing": missing,
        "quick": args.quick,
    }
    for c in missing:
        note(f"skipping {c}: needs {', '.join(CLIENTS[c].needs)}")
    with tempfile.TemporaryDirectory(prefix="batchpoll-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            meta["cores"] = {"server": bench.server_core, "client": bench.client_core}
            note(
                f"server {bench.server.url} on core {bench.server_core}, "
                f"clients on core {bench.client_core}"
            )
            if args.probe_s and shutil.which("wrk"):
                meta["probe"] = startup.probe_server(bench, args.probe_s)
            if {"a", "b"} & args.workloads:
                bench.throughput()
            if "c" in args.workloads:
                bench.waiting()
            if "d" in args.workloads and not bench.over_budget("d"):
                meta["startup"] = startup.measure(bench, args.d_runs)
        finally:
            bench.server.close()
    meta["skipped"] = bench.skipped
    meta["elapsed_s"] = time.monotonic() - started
    ok = report.write(args.out, bench.runs, meta)
    note(f"done in {meta['elapsed_s']:.0f} s; wrote {args.out}/results.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
