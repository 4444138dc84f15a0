"""Check the core limits against a simulator in its own process, counting server-side.

    python benchmarks/limits.py [rate|concurrency|memory ...] [--ids N]

- rate:         N ids (default 10,000) with --rate 200: most requests in any 1-s window at the
                server, and the achieved rate over the busy span.
- concurrency:  --concurrency 5 against slow answers: most requests in flight at the server.
- memory:       N ids (default 100,000) all pending at once: peak RSS of `batchpoll run`.

Loopback only; every run is bounded by a --deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

KEY = "limits-key"
STATS = "/__simulator/stats"


@contextmanager
def simulator(*knobs: str) -> Iterator[str]:
    """`batchpoll simulate` on a free loopback port, in its own process; yields its URL."""
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write(KEY)
    cmd = [sys.executable, "-m", "batchpoll", "simulate", "--port", "0", "--api-key-file", f.name]
    proc = subprocess.Popen([*cmd, *knobs], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", banner)
        if not match:
            raise RuntimeError(f"simulator did not start: {banner!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(f.name)


def server_stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + STATS, timeout=10) as resp:
        return dict(json.load(resp))


def run(url: str, n: int, *flags: str) -> tuple[int, float, float]:
    """`batchpoll run` over n ids under /usr/bin/time -v: (exit code, wall s, peak RSS MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp, "ids.txt")
        ids.write_text("".join(f"job-{i:07d}\n" for i in range(n)))
        cmd = [sys.executable, "-m", "batchpoll", "run", str(ids), "-o", str(Path(tmp, "o.jsonl"))]
        cmd += ["--base-url", url, "--log-format", "json", "--fail-on", "none", *flags]
        env = {**os.environ, "CEKURA_API_KEY": KEY}
        started = time.monotonic()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, check=False
        )
        wall = time.monotonic() - started
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        lines = Path(tmp, "o.jsonl").read_bytes().count(b"\n")
        if lines != n:
            raise RuntimeError(f"expected {n} records, found {lines}")
        return proc.returncode, wall, int(rss.group(1)) / 1024 if rss else float("nan")


def check_rate(n: int) -> None:
    with simulator("--min-polls", "1", "--max-polls", "3") as url:
        code, wall, _ = run(url, n, "--rate", "200", "--concurrency", "32", "--interval", "1")
        st = server_stats(url)
    print(
        f"rate: {n} ids, --rate 200: exit {code}, {st['requests']} requests in {wall:.1f}s; "
        f"max in any 1-s window {st['max_in_1s_window']} (limit 201); "
        f"achieved {st['rate_over_busy_span']}/s over the busy span (target >= 190)"
    )


def check_concurrency(n: int) -> None:
    with simulator("--latency", "0.2", "--min-polls", "1", "--max-polls", "1") as url:
        code, _, _ = run(url, n, "--concurrency", "5", "--rate", "1000", "--burst", "50")
        st = server_stats(url)
    print(
        f"concurrency: {n} ids, --concurrency 5, 0.2 s answers: exit {code}; "
        f"max in flight at the server {st['max_in_flight']} (limit 5)"
    )


def check_memory(n: int) -> None:
    with simulator("--pending") as url:
        code, wall, rss = run(
            url,
            n,
            "--rate",
            "5000",
            "--burst",
            "50",
            "--concurrency",
            "64",
            "--interval",
            "120",
            "--max-interval",
            "120",
            "--deadline",
            "60",
        )
        st = server_stats(url)
    print(
        f"memory: {n} ids pending at once ({st['ids_polled']} polled, all waiting): exit {code}, "
        f"{wall:.1f}s; peak RSS of batchpoll run {rss:.1f} MB (limit 150 MB)"
    )


def run_checks(doc: str, checks: dict[str, tuple[Callable[[int], None], int]]) -> None:
    """The command line of an acceptance script: run the named checks, each at its id count."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("checks", nargs="*", default=list(checks))
    parser.add_argument("--ids", type=int, default=None, help="override the id count")
    args = parser.parse_args()
    for name in args.checks:
        check, ids = checks[name]
        check(args.ids or ids)


def main() -> None:
    run_checks(
        __doc__ or "",
        {
            "rate": (check_rate, 10_000),
            "concurrency": (check_concurrency, 200),
            "memory": (check_memory, 100_000),
        },
    )


if __name__ == "__main__":
    main()
