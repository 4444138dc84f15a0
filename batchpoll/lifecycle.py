"""One id's life from first poll to its one record, as pure functions of outcomes and time.

The engine owns a ``Slot`` per id it is polling and feeds each poll's ``Outcome`` to
``advance``; the answer is either the id's final ``Record`` or the monotonic time at which to
poll it again. No I/O and no clock reads here: *now* (monotonic seconds) and *wall* (epoch
seconds) are passed in, so every rule is testable with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random

from .backoff import grow, jittered, retry_delay
from .records import (
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The timing rules of one run, all in seconds."""

    interval: float
    max_interval: float
    timeout: float
    max_retries: int
    growth: float = 1.5
    jitter: float = 0.2


class Slot:
    """Mutable state of one id being polled; about 150 bytes, so 100k of them stay small."""

    __slots__ = (
        "answer",
        "base",
        "expires_at",
        "failures",
        "first_mono",
        "first_wall",
        "last_reason",
        "last_wall",
        "pid",
        "polls",
    )

    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.polls = 0
        self.failures = 0  # consecutive transient failures
        self.base: float | None = None  # un-jittered wait between in-progress polls
        self.first_mono = 0.0
        self.first_wall = 0.0
        self.last_wall = 0.0
        self.expires_at = float("inf")
        self.answer: Answer | None = None
        self.last_reason: str | None = None

    def __repr__(self) -> str:
        return f"Slot({self.pid!r}, polls={self.polls}, failures={self.failures})"


def note_sent(slot: Slot, policy: Policy, now: float, wall: float) -> None:
    """Record that a request for *slot* goes out now; the first one starts its timeout."""
    if slot.polls == 0:
        slot.first_mono = now
        slot.first_wall = wall
        slot.expires_at = now + policy.timeout
    slot.polls += 1
    slot.last_wall = wall


def advance(
    slot: Slot, outcome: Outcome, policy: Policy, now: float, wall: float, rng: Random
) -> Record | float:
    """Apply one poll's outcome: the id's final record, or when (monotonic s) to poll again."""
    match outcome:
        case Answer(status=status) if status in TERMINAL_STATUSES:
            slot.answer = outcome
            return finish(slot, status, wall)
        case Answer():
            slot.answer = outcome
            slot.failures = 0
            slot.base = grow(
                slot.base, first=policy.interval, factor=policy.growth, cap=policy.max_interval
            )
            return _again(slot, now + jittered(slot.base, jitter=policy.jitter, rng=rng))
        case Rejected(messages=messages):
            return finish(slot, "rejected", wall, error=messages)
        case NotFound():
            return finish(slot, "not_found", wall, error="HTTP 404: no such progress id")
        case Broken(reason=reason):
            return finish(slot, "error", wall, error=reason)
        case Throttled(retry_after=retry_after, reason=reason) if retry_after is not None:
            # The whole run pauses until retry_after passes (the engine's job); this id is
            # simply due again, and waiting as asked does not use up its retries.
            slot.last_reason = reason
            return _again(slot, now)
        case Throttled(reason=reason) | Transient(reason=reason):
            slot.failures += 1
            slot.last_reason = reason
            if slot.failures >= policy.max_retries:
                return finish(slot, "error", wall, error=f"{reason} ({slot.failures} attempts)")
            delay = retry_delay(
                slot.failures, base=policy.interval, cap=policy.max_interval, rng=rng
            )
            return _again(slot, now + delay)
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def _again(slot: Slot, due: float) -> float:
    # Never sleep past the id's own budget: wake at expiry, and expire then without a request.
    return min(due, slot.expires_at)


def expired(slot: Slot, now: float) -> bool:
    """Whether the id's per-id budget is spent (it was polled and its timeout has passed)."""
    return slot.polls > 0 and now >= slot.expires_at


def finish(slot: Slot, status: str, wall: float, *, error: str | None = None) -> Record:
    """The id's one record, with the API's last values and batchpoll's own facts."""
    answer = slot.answer
    if error is None and answer is not None:
        error = answer.error
    if error is None and status == "timed_out" and slot.last_reason:
        error = f"last failure: {slot.last_reason}"
    polled = slot.polls > 0
    return Record(
        progress_id=slot.pid,
        status=status,
        mode=answer.mode if answer else None,
        session_id=answer.session_id if answer else None,
        result=answer.result if answer else None,
        error=error,
        polls=slot.polls,
        first_poll_at=_iso(slot.first_wall) if polled else None,
        last_poll_at=_iso(slot.last_wall) if polled else None,
        elapsed_s=round(slot.last_wall - slot.first_wall, 3) if polled else None,
        last_api_status=answer.status if answer else None,
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
