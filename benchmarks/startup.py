"""(d) start-up times, and the probe that shows the bench server is not the limit.

Both use command-line tools when the machine has them (hyperfine, wrk: Debian packages,
optional) and say which was used.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from procs import child_env, pinned

if TYPE_CHECKING:
    from run import Bench

PATH = "/test_framework/v1/scenarios/scenario-agent-progress/"


def _timed_run(cmd: list[str], core: int | None, timeout: float) -> None:
    """Run *cmd* to the end on *core*, as every client runs; a failure raises."""
    subprocess.run(
        cmd,
        env=child_env(),
        capture_output=True,
        check=True,
        timeout=timeout,
        preexec_fn=pinned(core),
    )


def probe_server(bench: Bench, seconds: float) -> dict[str, object]:
    """wrk (C, not Python) against the server from the client core: the server's capacity.

    If this is well above every client's polls/s, the server was not what limited them.
    """
    conns = bench.args.concurrency
    bench.server.reset(pending=True)
    cpu0 = bench.server.stats()["cpu_s"]
    url = f"{bench.server.url}{PATH}?progress_id=job-0000000"
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", url]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
        preexec_fn=pinned(bench.client_core),
    )
    wall = time.monotonic() - started
    cpu = bench.server.stats()["cpu_s"] - cpu0
    match = re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout)
    rps = float(match.group(1)) if match else None
    print(f"  [probe] wrk, {conns} connections: {rps} requests/s", file=sys.stderr, flush=True)
    return {"tool": "wrk", "connections": conns, "rps": rps, "server_cpu_pct": 100 * cpu / wall}


def measure(bench: Bench, runs: int) -> dict[str, dict[str, float]]:
    """Median wall ms of `python -c pass`, `batchpoll --help` and a 1-id `batchpoll run`."""
    tmp, url = bench.tmp, bench.server.url
    one = tmp / "d.txt"
    one.write_text("job-0000000\n")
    script = Path(sys.executable).with_name("batchpoll")  # what a user types
    bp = [str(script)] if script.exists() else [sys.executable, "-m", "batchpoll"]
    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "batchpoll --help": [*bp, "--help"],
        "batchpoll run, 1 id": [
            *bp,
            "run",
            str(one),
            "-o",
            str(tmp / "d.jsonl"),
            "--overwrite",
            "--base-url",
            url,
            "--interval",
            "0.01",
            "--log-format",
            "json",
            "--no-progress",
        ],
    }
    bench.server.reset(polls=1)  # the id completes at every run's first poll
    if shutil.which("hyperfine"):
        out = _hyperfine(cmds, runs, tmp / "hyperfine.json", bench.client_core)
    else:
        out = {name: _loop(cmd, runs, bench.client_core) for name, cmd in cmds.items()}
    for name, r in out.items():
        print(f"  [d] {name:22} median {r['median_ms']:.0f} ms", file=sys.stderr, flush=True)
    return out


def _hyperfine(
    cmds: dict[str, list[str]], runs: int, export: Path, core: int | None
) -> dict[str, dict[str, float]]:
    argv = ["hyperfine", "-N", "--warmup", str(min(2, runs)), "--runs", str(runs)]
    argv += ["--export-json", str(export)]
    for name, cmd in cmds.items():
        argv += ["-n", name, shlex.join(cmd)]
    _timed_run(argv, core, timeout=300)
    results = json.loads(export.read_text())["results"]
    return {
        r["command"]: {
            "median_ms": 1000 * r["median"],
            "min_ms": 1000 * r["min"],
            "max_ms": 1000 * r["max"],
            "runs": len(r["times"]),
            "tool": "hyperfine",
        }
        for r in results
    }


def _loop(cmd: list[str], runs: int, core: int | None) -> dict[str, float]:
    """Without hyperfine: one warm-up, then *runs* timed runs."""
    times = []
    for i in range(runs + 1):
        started = time.perf_counter()
        _timed_run(cmd, core, timeout=60)
        if i:
            times.append(time.perf_counter() - started)
    return {
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "max_ms": 1000 * max(times),
        "runs": runs,
        "tool": "loop",
    }
