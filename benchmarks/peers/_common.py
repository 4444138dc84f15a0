"""The flags every benchmark client takes, so the harness drives them all the same way.

    CLIENT IDS -o OUT --base-url URL --concurrency N --interval S [--rate R] [--burst B]

Each client polls every id in IDS until it leaves `in_progress` and writes one line per
finished id to OUT. The key comes from CEKURA_API_KEY (the bench server accepts any).
"""

from __future__ import annotations

import argparse
import os

PATH = "/test_framework/v1/scenarios/scenario-agent-progress/"


def parse_args(description: str, *, rate: bool) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("ids", help="file of progress ids, one per line")
    p.add_argument("-o", "--output", required=True, help="one line per finished id")
    p.add_argument("--base-url", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--interval", type=float, default=3.0, help="seconds between polls of an id")
    if rate:
        p.add_argument("--rate", type=float, help="most requests per second (none: no limit)")
        p.add_argument("--burst", type=int, default=1, help="requests allowed above the rate")
    args = p.parse_args()
    args.key = os.environ.get("CEKURA_API_KEY", "")
    args.url = args.base_url.rstrip("/") + PATH
    return args


def read_ids(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
