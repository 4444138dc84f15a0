"""One id's life from first poll to its one record, as pure functions of outcomes and time.

The engine owns a ``Slot`` per id it is polling and feeds each poll's ``Outcome`` to
``advance``; the answer is either the id's final ``Record`` or the monotonic time at which to
poll it again. No I/O and no clock reads here: *now* (monotonic seconds) and *wall* (epoch
seconds) are passed in, so every rule is testable with a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random
from typing import Any

from ..records import (
    TERMINAL_STATUSES,
    Answer,
    Broken,
    NotFound,
    Outcome,
    Record,
    Rejected,
    Throttled,
    Transient,
)
from .backoff import grow, jittered, retry_delay


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The timing rules of one run, all in seconds."""

    interval: float
    max_interval: float
    timeout: float
    max_retries: int
    growth: float = 1.5
    jitter: float = 0.2
    #: Epoch seconds minus monotonic seconds, fixed for the run: wall times are derived from
    #: monotonic ones, so a slot stores two floats instead of four.
    wall_offset: float = 0.0


class Slot:
    """Mutable state of one id being polled: 12 slots, about 130 bytes plus the id itself.

    Times are monotonic seconds; the expiry is derived from ``first`` and the policy rather
    than stored, because 100k waiting ids multiply every field.
    """

    __slots__ = (
        "base",
        "error",
        "failures",
        "first",
        "last",
        "last_reason",
        "mode",
        "pid",
        "polls",
        "result",
        "session_id",
        "status",
    )

    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.polls = 0
        self.failures = 0  # consecutive transient failures
        self.base: float | None = None  # un-jittered wait between in-progress polls
        self.first = 0.0  # when the first request went out
        self.last = 0.0  # when the latest request went out
        # The API's values as last returned, held here rather than as the Answer object:
        # one object fewer per waiting id.
        self.status: str | None = None
        self.mode: str | None = None
        self.session_id: int | None = None
        self.result: Any = None
        self.error: str | None = None
        self.last_reason: str | None = None

    def keep(self, answer: Answer) -> None:
        """Remember the API's values from *answer*."""
        self.status, self.mode, self.session_id = answer.status, answer.mode, answer.session_id
        self.result, self.error = answer.result, answer.error

    def __repr__(self) -> str:
        return f"Slot({self.pid!r}, polls={self.polls}, failures={self.failures})"


class SharedMillisecond:
    """Send times to the millisecond, one float object for every send in the same millisecond.

    A float is a 24-byte object (32 with the allocator's rounding) and each waiting id keeps
    two; at thousands of sends a second, ids sent within a millisecond of each other can share
    one. Records show milliseconds, so nothing a user sees changes.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -math.inf

    def __call__(self, now: float) -> float:
        """*now*, or the time returned before when that is less than a millisecond earlier."""
        last = self._last
        if 0.0 <= now - last < 0.001:
            return last
        self._last = now
        return now


def note_sent(slot: Slot, now: float) -> None:
    """Record that a request for *slot* goes out now; the first one starts its timeout."""
    if slot.polls == 0:
        slot.first = now
    slot.polls += 1
    slot.last = now


def advance(
    slot: Slot, outcome: Outcome, policy: Policy, now: float, rng: Random
) -> Record | float:
    """Apply one poll's outcome: the id's final record, or when (monotonic s) to poll again."""
    match outcome:
        case Answer(status=status) if status in TERMINAL_STATUSES:
            slot.keep(outcome)
            return finish(slot, status, policy)
        case Answer():
            slot.keep(outcome)
            slot.failures = 0
            slot.base = grow(
                slot.base, first=policy.interval, factor=policy.growth, cap=policy.max_interval
            )
            return _again(slot, policy, now + jittered(slot.base, jitter=policy.jitter, rng=rng))
        case Rejected(messages=messages):
            return finish(slot, "rejected", policy, error=messages)
        case NotFound():
            return finish(slot, "not_found", policy, error="HTTP 404: no such progress id")
        case Broken(reason=reason):
            return finish(slot, "error", policy, error=reason)
        case Throttled(retry_after=retry_after, reason=reason) if retry_after is not None:
            # The whole run pauses until retry_after passes (the engine's job); this id is
            # simply due again, and waiting as asked does not use up its retries.
            slot.last_reason = reason
            return _again(slot, policy, now)
        case Throttled(reason=reason) | Transient(reason=reason):
            slot.failures += 1
            slot.last_reason = reason
            if slot.failures >= policy.max_retries:
                error = f"{reason} ({slot.failures} attempts)"
                return finish(slot, "error", policy, error=error)
            delay = retry_delay(
                slot.failures, base=policy.interval, cap=policy.max_interval, rng=rng
            )
            return _again(slot, policy, now + delay)
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def _again(slot: Slot, policy: Policy, due: float) -> float:
    # Never sleep past the id's own budget: wake at expiry, and expire then without a request.
    return min(due, slot.first + policy.timeout)


def expired(slot: Slot, now: float, policy: Policy) -> bool:
    """Whether the id's per-id budget is spent (it was polled and its timeout has passed)."""
    return slot.polls > 0 and now >= slot.first + policy.timeout


def finish(slot: Slot, status: str, policy: Policy, *, error: str | None = None) -> Record:
    """The id's one record, with the API's last values and batchpoll's own facts."""
    if error is None:
        error = slot.error
    if error is None and status == "timed_out" and slot.last_reason:
        error = f"last failure: {slot.last_reason}"
    polled = slot.polls > 0
    return Record(
        progress_id=slot.pid,
        status=status,
        mode=slot.mode,
        session_id=slot.session_id,
        result=slot.result,
        error=error,
        polls=slot.polls,
        first_poll_at=iso_utc(slot.first + policy.wall_offset) if polled else None,
        last_poll_at=iso_utc(slot.last + policy.wall_offset) if polled else None,
        elapsed_s=round(slot.last - slot.first, 3) if polled else None,
        last_api_status=slot.status,
    )


def iso_utc(epoch: float) -> str:
    """*epoch* as ISO 8601 UTC to the millisecond, exactly as ``datetime`` would write it.

    Two per record: building a datetime each time was the engine's largest single cost, so
    the text up to the second is kept and only the milliseconds are looked up.
    """
    second = int(epoch)
    # datetime.fromtimestamp's own rounding: the fraction to whole microseconds, half to even.
    # The fraction of a float is exact, so this is the same number datetime rounds.
    micros = round((epoch - second) * 1e6)
    if epoch < 0 or micros >= 1_000_000:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    prefix = _PREFIXES.get(second)
    if prefix is None:
        if len(_PREFIXES) >= 4096:  # a run's records span few seconds at a time
            _PREFIXES.clear()
        prefix = _PREFIXES[second] = datetime.fromtimestamp(second, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return prefix + _MILLIS[micros // 1000]


_MILLIS = tuple(f".{ms:03d}+00:00" for ms in range(1000))
#: Epoch second -> its text up to the second. A record's first and last poll are usually
#: seconds apart, so one cached second would miss on every other call.
_PREFIXES: dict[int, str] = {}
