"""Live counters of one run, and what they mean for the exit code."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RunStats:
    """Live counters of one run, read by the heartbeat and the summary."""

    started: float = field(default_factory=time.monotonic)
    ids: int = 0
    input_done: bool = False
    done: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    in_flight: int = 0
    paused_s: float = 0.0
    signal: int | None = None  # the signal that stopped the run early
    lowest_rate: float | None = None  # lowest effective rate after 429s without Retry-After

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> dict[str, Any]:
        """The facts of the run so far, as plain JSON-able values."""
        elapsed = self.elapsed()
        return {
            "ids": self.ids,
            "done": self.done,
            "by_status": dict(sorted(self.by_status.items())),
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "paused_s": round(self.paused_s, 3),
            "lowest_rate": None if self.lowest_rate is None else round(self.lowest_rate, 3),
            "elapsed_s": round(elapsed, 3),
            "stopped_by_signal": self.signal,
            "request_rate": round(self.requests / elapsed, 2) if elapsed > 0 else 0.0,
        }


def exit_code(by_status: Mapping[str, int], fail_on: frozenset[str]) -> int:
    """0 when no id ended in a ``--fail-on`` status, else 1."""
    return 1 if any(by_status.get(status) for status in fail_on) else 0
