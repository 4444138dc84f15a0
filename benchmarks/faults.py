"""Acceptance runs for reliability, against a simulator in its own process.

    python benchmarks/faults.py [storm|kill|secrets ...]

- storm:    5,000 ids through 20% 5xx, 5% dropped connections, 5% truncated bodies and 429s
            with and without Retry-After; records compared with the simulator's truth.
- kill:     SIGKILL at three random moments, --resume each time: one record per id.
- secrets:  a faulty run at --log-level debug; the key counted in every byte it wrote.

Loopback only; every run is bounded by a --deadline.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
from limits import KEY, run_checks, server_stats, simulator

from batchpoll.simulator import SimSettings, truth

SEED = 21
STORM = ["--error-rate", "0.2", "--drop-rate", "0.05", "--truncate-rate", "0.05"]
STORM += ["--throttle-rate", "0.005", "--retry-after", "1,date,none", "--seed", str(SEED)]
FAST = ["--rate", "1000", "--burst", "20", "--concurrency", "32", "--interval", "0.05"]
FAST += ["--max-interval", "0.5", "--max-retries", "40", "--deadline", "300", "--fail-on", "none"]


def batchpoll(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "batchpoll", "run", *args, "--base-url", url, *FAST]


def env() -> dict[str, str]:
    return {**os.environ, "CEKURA_API_KEY": KEY}


def write_ids(tmp: str, n: int) -> Path:
    path = Path(tmp, "ids.txt")
    path.write_text("".join(f"storm-{i:05d}\n" for i in range(n)))
    return path


def read(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def check_storm(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, simulator(*STORM) as url:
        ids, out = write_ids(tmp, n), Path(tmp, "out.jsonl")
        started = time.monotonic()
        proc = subprocess.run(batchpoll(url, str(ids), "-o", str(out)), env=env(), check=False)
        wall = time.monotonic() - started
        stats = server_stats(url)
        records = read(out)
    sim = SimSettings(seed=SEED)
    got = {str(r["progress_id"]): r["status"] for r in records}
    wrong = [pid for pid in got if truth(pid, sim)[0] != got[pid]]
    print(
        f"storm: {n} ids, exit {proc.returncode}, {wall:.1f}s; {len(records)} records, "
        f"{len(got)} distinct, {len(wrong)} differing from the simulator's truth; server saw "
        f"{stats['requests']} requests, statuses {stats['by_status']}, faults {stats['faults']}"
    )


def check_kill(n: int) -> None:
    rng = random.Random()
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "0.02") as url:
        ids, out = write_ids(tmp, n), Path(tmp, "out.jsonl")
        slow = ["--rate", "300"]
        for attempt in range(3):
            cmd = batchpoll(url, str(ids), "-o", str(out), *slow)
            cmd += ["--resume"] if attempt else []
            proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL)
            moment = rng.uniform(1.0, 4.0)
            time.sleep(moment)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            print(f"kill {attempt + 1}: SIGKILL after {moment:.2f}s, {len(read(out))} records")
        cmd = batchpoll(url, str(ids), "-o", str(out), "--resume")
        proc2 = subprocess.run(cmd, env=env(), stderr=subprocess.DEVNULL, check=False)
        counts = Counter(str(r["progress_id"]) for r in read(out))
    print(
        f"kill: final --resume exit {proc2.returncode}; {sum(counts.values())} records, "
        f"{len(counts)} distinct ids of {n}, most records for one id: {max(counts.values())}"
    )


def check_secrets(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, simulator(*STORM) as url:
        ids, out, summary = write_ids(tmp, n), Path(tmp, "out.jsonl"), Path(tmp, "summary.json")
        with ids.open("a") as f:
            f.write("notfound-x\nreject-y\nflaky-z\nbad id\n")
        cmd = batchpoll(url, str(ids), "-o", str(out), "--summary", str(summary))
        cmd += ["--log-level", "debug", "--max-retries", "3"]
        proc = subprocess.run(cmd, env=env(), capture_output=True, check=False)
        blobs = {
            "stdout": proc.stdout,
            "stderr": proc.stderr,
            "OUTPUT": out.read_bytes(),
            "summary": summary.read_bytes(),
        }
    counts = {name: blob.count(KEY.encode()) for name, blob in blobs.items()}
    sizes = {name: len(blob) for name, blob in blobs.items()}
    print(f"secrets: exit {proc.returncode}; bytes {sizes}; occurrences of the key {counts}")


def main() -> None:
    run_checks(
        __doc__ or "",
        {
            "storm": (check_storm, 5_000),
            "kill": (check_kill, 3_000),
            "secrets": (check_secrets, 500),
        },
    )


if __name__ == "__main__":
    main()
