"""Live counters of one run, the tally of its records, and what they mean for the exit code.

``Tally`` is the one place records are counted: the run's summary (through ``RunStats``) and
``batchpoll report`` (through ``report.summarize``) both read its ``facts()``, so they agree.
"""

from __future__ import annotations

import re
import time
from array import array
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..records import DEFAULT_FAIL_ON, TERMINAL_STATUSES, Record

#: How many failed ids ``Tally.facts`` names; the rest are only counted.
FIRST_FAILED: Final = 10
#: The causes ``cause_of`` sorts a transient failure into.
CAUSES: Final = ("5xx", "429", "timeout", "connection", "body", "other")


class Tally:
    """What the written records say: counts by status, time to a terminal status, first failures.

    Memory does not grow with the records except for the timings: one ``array('d')`` entry
    (8 bytes) per record that reached one of the API's terminal statuses, so a million records
    cost about 8 MB.
    """

    __slots__ = ("_failed", "_times", "by_mode", "by_status", "fail_on", "records")

    def __init__(self, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on
        self.records = 0
        self.by_status: Counter[str] = Counter()
        self.by_mode: Counter[str] = Counter()
        # Seconds from first to last poll of every id that reached an API terminal status.
        self._times = array("d")
        # The first FIRST_FAILED records in fail_on, as {"progress_id", "status", "error"}.
        self._failed: list[dict[str, str | None]] = []

    def __repr__(self) -> str:
        return (
            f"Tally(records={self.records}, failed={self.failed_count}, "
            f"by_status={dict(self.by_status)!r})"
        )

    @property
    def failed_count(self) -> int:
        """How many records counted so far (resumed ones too) have a status in ``fail_on``."""
        return sum(self.by_status[status] for status in self.fail_on)

    def add(
        self,
        progress_id: str,
        status: str,
        elapsed_s: float | None,
        error: str | None,
        mode: str | None,
    ) -> bool:
        """Count one record; return whether its status is in ``fail_on``.

        Only the API's terminal statuses are timed: a ``timed_out`` record's elapsed time is the
        budget, and a 404's or 400's is one poll, and neither says how long jobs take.
        """
        self.records += 1
        self.by_status[status] += 1
        self.by_mode[mode or "unknown"] += 1
        if elapsed_s is not None and status in TERMINAL_STATUSES:
            self._times.append(elapsed_s)
        failing = status in self.fail_on
        if failing and len(self._failed) < FIRST_FAILED:
            self._failed.append({"progress_id": progress_id, "status": status, "error": error})
        return failing

    def add_prior(self, statuses: Mapping[str, int]) -> None:
        """Count records an earlier run wrote (``--resume``): by status only, no ids or times."""
        for status, count in statuses.items():
            self.records += count
            self.by_status[status] += count

    def facts(self) -> dict[str, Any]:
        """Everything counted so far, as plain JSON-able values (times in seconds)."""
        times = sorted(self._times)
        return {
            "records": self.records,
            "by_status": dict(sorted(self.by_status.items())),
            "by_mode": dict(sorted(self.by_mode.items())),
            "time_to_end_s": {
                "p50": _round(percentile(times, 50)),
                "p95": _round(percentile(times, 95)),
                "max": _round(times[-1] if times else None),
            },
            "failed": [dict(entry) for entry in self._failed],
            "failed_count": self.failed_count,
        }


def percentile(ordered: list[float], pct: int) -> float | None:
    """The nearest-rank *pct*-th percentile of *ordered* (sorted ascending), None when empty.

    Nearest rank: the smallest value with at least pct% of the values at or below it, i.e. the
    value at 1-based rank ceil(pct/100 * n). It is always one of the values, never interpolated.
    """
    if not ordered:
        return None
    rank = max(1, -(-pct * len(ordered) // 100))  # ceil in integers: no float rounding
    return ordered[rank - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# aiohttp (and OSError) class names, as client.py puts them before ": " in a Transient reason.
_BODY_ERRORS: Final = frozenset(
    {"ClientPayloadError", "ContentLengthError", "TransferEncodingError", "ClientResponseError"}
)
_CONNECTION_ERRORS: Final = frozenset(
    {
        "BrokenPipeError",
        "ClientConnectionError",
        "ClientConnectionResetError",
        "ClientConnectorCertificateError",
        "ClientConnectorDNSError",
        "ClientConnectorError",
        "ClientConnectorSSLError",
        "ClientOSError",
        "ClientProxyConnectionError",
        "ClientSSLError",
        "ConnectionAbortedError",
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "OSError",
        "ServerConnectionError",
        "ServerDisconnectedError",
        "gaierror",
    }
)
_HTTP_STATUS = re.compile(r"HTTP (\d{3})\b")
_LEADING_NAME = re.compile(r"[A-Za-z_]\w*")


def cause_of(reason: str) -> str:
    """Sort a ``Transient`` reason from ``client`` into one of ``CAUSES``.

    "HTTP 503" → 5xx, "HTTP 429" → 429, "timeout after 5s" or a ``*Timeout*`` class → timeout,
    "unreadable body: …" or a payload error → body, resets, refusals and DNS → connection;
    anything else (another HTTP status, an unknown class) → other.
    """
    if match := _HTTP_STATUS.match(reason):
        code = int(match.group(1))
        if code == 429:
            return "429"
        return "5xx" if 500 <= code <= 599 else "other"
    if reason.startswith("unreadable body"):
        return "body"
    if reason.startswith("timeout"):
        return "timeout"
    name_match = _LEADING_NAME.match(reason)
    name = name_match.group(0) if name_match else ""
    if "Timeout" in name:
        return "timeout"
    if name in _BODY_ERRORS:
        return "body"
    if name in _CONNECTION_ERRORS:
        return "connection"
    return "other"


@dataclass(slots=True)
class RunStats:
    """Live counters of one run, read by the heartbeat and the summary.

    Records are counted by ``add`` (and resumed ones by ``add_prior``) into one ``Tally``;
    ``done`` and ``by_status`` are read from it.
    """

    started: float = field(default_factory=time.monotonic)
    fail_on: frozenset[str] = DEFAULT_FAIL_ON
    ids: int = 0
    input_done: bool = False
    requests: int = 0
    retries: int = 0
    retry_causes: Counter[str] = field(default_factory=Counter)  # keys from CAUSES
    throttled: int = 0
    in_flight: int = 0
    paused_s: float = 0.0
    signal: int | None = None  # the signal that stopped the run early
    lowest_rate: float | None = None  # lowest effective rate after 429s without Retry-After
    resumed: int = field(default=0, init=False)  # records kept from an earlier run
    tally: Tally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Tally(self.fail_on)

    @property
    def done(self) -> int:
        """Records written by this run (resumed ones not included)."""
        return self.tally.records - self.resumed

    @property
    def by_status(self) -> Counter[str]:
        """Records by status, resumed ones included. Read it; count with ``add``/``add_prior``."""
        return self.tally.by_status

    def add(self, record: Record) -> bool:
        """Count one written record; return whether its status is in ``fail_on``."""
        return self.tally.add(
            record.progress_id, record.status, record.elapsed_s, record.error, record.mode
        )

    def add_prior(self, statuses: Mapping[str, int]) -> None:
        """Count the records ``--resume`` kept (status → count) into ``by_status``, not ``done``."""
        self.tally.add_prior(statuses)
        self.resumed += sum(statuses.values())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> dict[str, Any]:
        """The facts of the run so far, as plain JSON-able values."""
        elapsed = self.elapsed()
        facts = self.tally.facts()
        return {
            "ids": self.ids,
            "done": self.done,
            "by_status": facts["by_status"],
            "by_mode": facts["by_mode"],
            "time_to_end_s": facts["time_to_end_s"],
            "failed": facts["failed"],
            "failed_count": facts["failed_count"],
            "requests": self.requests,
            "retries": self.retries,
            "retries_by_cause": dict(sorted(self.retry_causes.items())),
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


#: Seconds of history behind the request rate: long enough to smooth a burst, short enough
#: to show a 429 pause within a few redraws.
RATE_WINDOW_S: Final = 5.0


class Rate:
    """Growth per second of a counter over the last *window* seconds, from samples it is fed.

    The lifetime average (``requests / elapsed``) hides a 429 pause or a slow patch behind
    everything before it, so the view shows this instead.
    """

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self._window = window
        # (time, count) oldest first; one sample at or before the window's start is kept as
        # the base, so the span is a full window once there is that much history.
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, count: int) -> float | None:
        """Record *count* at *now* (seconds); the rate since the window's start, None at first."""
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and samples[1][0] <= now - self._window:
            samples.popleft()
        then, before = samples[0]
        return None if now <= then else (count - before) / (now - then)


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the view shows, read from ``RunStats`` at one moment. Times in seconds."""

    done: int
    total: int | None  # None until the whole input has been read
    by_status: Mapping[str, int]
    request_rate: float | None  # requests/s over the last RATE_WINDOW_S; None at first
    in_flight: int
    throttled: int  # 429 answers
    paused_s: float  # time spent paused by a Retry-After
    elapsed_s: float
    eta_s: float | None  # None while the total or the finishing rate is unknown

    def as_log(self) -> dict[str, Any]:
        """The same facts as log keys, for the heartbeat when there is no live view."""
        return {
            "done": self.done,
            "total": self.total,
            "by_status": dict(self.by_status),
            "request_rate": None if self.request_rate is None else round(self.request_rate, 2),
            "in_flight": self.in_flight,
            "throttled": self.throttled,
            "paused_s": round(self.paused_s, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s),
        }


def facts(stats: RunStats, request_rate: float | None) -> Facts:
    """Read *stats* once. The ETA divides what is left by the lifetime rate of finished ids,
    steadier than a rolling one, since ids finish in bursts a poll interval apart."""
    done, elapsed = stats.done, stats.elapsed()
    total = stats.ids if stats.input_done else None
    eta = None
    if total is not None and done >= total:
        eta = 0.0
    elif total is not None and done > 0 and elapsed > 0:
        eta = (total - done) * elapsed / done
    return Facts(
        done=done,
        total=total,
        by_status=_copy(stats.by_status),
        request_rate=request_rate,
        in_flight=stats.in_flight,
        throttled=stats.throttled,
        paused_s=stats.paused_s,
        elapsed_s=elapsed,
        eta_s=eta,
    )


def _copy(counts: Mapping[str, int]) -> dict[str, int]:
    # The refresh thread reads while the event loop writes. Copying a Counter is one C call
    # under the GIL; a mapping that grows mid-copy anyway shows as empty for one frame.
    try:
        return dict(counts)
    except RuntimeError:
        return {}
