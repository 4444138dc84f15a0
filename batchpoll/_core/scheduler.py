"""What the run does next, decided from what happened (pure: time is passed in).

The engine tells the scheduler the facts (an id was read, the input ended, a poll came back,
the store granted a turn) and asks ``next(now)`` for one action at a time:

- a ``Slot`` to send now;
- ``Wait(until)``: nothing to do before *until* unless a new fact arrives;
- ``Emit(record)``: an id's one record, for the sink;
- ``Log(level, event, fields)``: something the run's log should say;
- ``SharePause(seconds)``: tell the other processes sharing the budget to pause;
- ``Signal.ASK_GRANT``: ask the shared store for the held slot's turn, then ``granted(at)``;
- ``Signal.CUT_SHORT``: a pause would outlast the deadline: end polling now;
- ``Signal.DONE``: every id has its record.

Rules, in the order ``next`` applies them: pending records and log lines first; at most
``concurrency`` in flight; the earliest-due slot goes first, and a new id (due since the run
started) before any re-poll; an id past its own timeout ends ``timed_out`` without a request;
nothing goes during a pause (a Retry-After); then the budget decides when.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from random import Random
from typing import Any, Final

from ..records import IN_PROGRESS, TERMINAL_STATUSES, Answer, Outcome, Record, Throttled, Transient
from .adaptive import Aimd
from .budget import Budget
from .config import Settings
from .lifecycle import Policy, Slot, advance, expired, finish
from .ratelimit import paced
from .schedule import TimingWheel
from .stats import RunStats, cause_of

#: How many distinct unknown statuses are logged (each once); past that, no more.
MAX_UNKNOWN_STATUSES: Final = 100
#: Bounds on how late (s) the timing wheel may let a re-poll fall due.
MIN_RESOLUTION_S: Final = 0.001
MAX_RESOLUTION_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before *until* (scheduler seconds; ``inf``: until a new fact)."""

    until: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand *record* to the sink."""

    record: Record


@dataclass(frozen=True, slots=True)
class Log:
    """Say *event* in the run's log at *level* (a structlog method name)."""

    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SharePause:
    """Tell the processes sharing the budget to pause for *seconds*."""

    seconds: float


class Signal(enum.Enum):
    """Actions that carry nothing."""

    ASK_GRANT = "ask_grant"
    CUT_SHORT = "cut_short"
    DONE = "done"


Action = Slot | Wait | Emit | Log | SharePause | Signal


class Scheduler:
    """The decisions of one run; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        budget: Budget,
        policy: Policy,
        *,
        now: float,
        stats: RunStats,
        rng: Random,
        shared: bool = False,
    ) -> None:
        """*now*: the run's start; *shared*: the budget is shared with other processes."""
        self.stats = stats
        self.deadline_at = math.inf if settings.deadline is None else now + settings.deadline
        self._concurrency = settings.concurrency
        self._budget = budget
        self._shared = shared
        self._policy = policy
        self._rng = rng
        # Re-polls may come out up to one bucket late: 1% of the interval (1 to 50 ms) costs
        # nothing a user would notice, and 100k ids waiting at a 5 s interval then share a few
        # hundred buckets instead of holding tens of thousands of one-item lists.
        resolution = min(MAX_RESOLUTION_S, max(MIN_RESOLUTION_S, settings.interval / 100))
        self._queue: TimingWheel[Slot] = TimingWheel(resolution)
        self._in_flight: set[Slot] = set()
        self._held: Slot | None = None  # picked, waiting for a pause, the budget or a grant
        self._next_new: tuple[float, str] | None = None
        self._input_done = False
        self._paused_until = -math.inf
        self._share_pause: float | None = None
        self._aimd = Aimd(settings.rate)
        self._actions: deque[Emit | Log | Signal] = deque()
        self._unknown_statuses: set[str] = set()
        self._set_rate(settings.rate)

    @classmethod
    def for_run(
        cls,
        settings: Settings,
        budget: Budget,
        *,
        now: float,
        wall_now: float,
        stats: RunStats,
        rng: Random,
        shared: bool = False,
    ) -> Scheduler:
        """A scheduler for a run starting at *now* (its clock) and *wall_now* (epoch s)."""
        policy = Policy(
            interval=settings.interval,
            max_interval=settings.max_interval,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            wall_offset=wall_now - now,
        )
        return cls(settings, budget, policy, now=now, stats=stats, rng=rng, shared=shared)

    # -- facts ------------------------------------------------------------------------------

    @property
    def wants_new(self) -> bool:
        """Whether the scheduler would take the next read id now."""
        return self._next_new is None and not self._input_done

    def add_new(self, due: float, pid: str) -> None:
        """A newly read id, due at *due*; only when ``wants_new``."""
        assert self.wants_new, "one new id at a time"
        self._next_new = (due, pid)

    def input_done(self) -> None:
        """The input has no more ids."""
        self._input_done = True

    def granted(self, at: float) -> None:
        """The shared store's answer to ``ASK_GRANT``: the held slot may go at *at*."""
        self._budget.grant(at)

    def result(self, slot: Slot, outcome: Outcome, now: float) -> None:
        """A poll of *slot* came back with *outcome* at *now*."""
        self._in_flight.discard(slot)
        self.stats.in_flight = len(self._in_flight)
        self._learn(slot, outcome, now)
        step = advance(slot, outcome, self._policy, now, self._rng)
        if isinstance(step, Record):
            self._actions.append(Emit(step))
        else:
            self._queue.push(step, slot)

    # -- decisions --------------------------------------------------------------------------

    def next(self, now: float) -> Action:
        """The one thing to do now; see the module docstring."""
        if self._actions:
            return self._actions.popleft()
        if self._share_pause is not None:
            seconds, self._share_pause = self._share_pause, None
            return SharePause(seconds)
        if len(self._in_flight) >= self._concurrency:
            return Wait(math.inf)
        slot, held = self._held, self._held is not None
        self._held = None
        if slot is None:
            slot = self._pick(now)
        if slot is None:
            if self._input_done and not self._in_flight and not self._queue:
                return Signal.DONE
            next_at = self._queue.next_due()
            return Wait(math.inf if next_at is None else next_at)
        if expired(slot, now, self._policy):
            return Emit(finish(slot, "timed_out", self._policy))
        if self._paused_until > now:
            self._budget.void()
            self._held = slot
            return Wait(self._paused_until)
        ready_at = self._budget.ready_at(now)
        if ready_at is None:
            self._held = slot
            return Signal.ASK_GRANT
        if ready_at > now:
            self._held = slot
            return Wait(ready_at)
        self._budget.sent(now, held=held)
        self._in_flight.add(slot)
        self.stats.in_flight = len(self._in_flight)
        return slot

    def drain(self) -> list[Emit | Log | Signal]:
        """The records and log lines decided but not yet taken (the run is ending)."""
        actions = list(self._actions)
        self._actions.clear()
        return actions

    def expire_all(self, deadline_s: float | None) -> list[Emit | Log | Signal]:
        """The deadline passed: what is pending, then ``timed_out`` for every id still held."""
        left = [*self._in_flight, *self._queue.pop_all()]
        if self._held is not None:
            left.append(self._held)
        if self._next_new is not None:
            left.append(Slot(self._next_new[1]))
        self._in_flight.clear()
        self._held = self._next_new = None
        self.stats.in_flight = 0
        timed_out = [Emit(finish(slot, "timed_out", self._policy)) for slot in left]
        return [
            Log("warning", "deadline_reached", {"deadline_s": deadline_s}),
            *self.drain(),
            *timed_out,
        ]

    def timed_out(self, pid: str) -> Record:
        """The record of an id read after the deadline."""
        return finish(Slot(pid), "timed_out", self._policy)

    # -- rules ------------------------------------------------------------------------------

    def _pick(self, now: float) -> Slot | None:
        """The earliest-due slot: a re-poll from the queue or the newly read id, or None."""
        due = self._queue.next_due()
        if self._next_new is not None and (due is None or self._next_new[0] < due):
            pid = self._next_new[1]
            self._next_new = None
            return Slot(pid)
        return self._queue.pop_due(now)

    def _learn(self, slot: Slot, outcome: Outcome, now: float) -> None:
        """What one outcome says about the run: throttling, retries, odd statuses."""
        match outcome:
            case Throttled(retry_after=retry_after):
                self.stats.throttled += 1
                if retry_after is not None:
                    # Any wait the server named pauses the run, whatever its number type.
                    self._pause(now, now + float(retry_after), outcome.reason)
                elif self._aimd.throttled(now):
                    self._set_rate(self._aimd.rate)
                    self.stats.lowest_rate = self._aimd.lowest
                    self._log("info", "rate_lowered", rate=round(self._aimd.rate, 3))
                return
            case Transient(reason=reason):
                self.stats.retries += 1
                self.stats.retry_causes[cause_of(reason)] += 1
                self._log("debug", "poll_failed", progress_id=slot.pid, reason=reason)
                return
            case Answer(status=status) if (
                status != IN_PROGRESS
                and status not in TERMINAL_STATUSES
                and status not in self._unknown_statuses
                and len(self._unknown_statuses) < MAX_UNKNOWN_STATUSES
            ):
                self._unknown_statuses.add(status)
                self._log("warning", "unknown_status", status=status, progress_id=slot.pid)
                if len(self._unknown_statuses) == MAX_UNKNOWN_STATUSES:
                    # A server inventing a status per answer would otherwise grow the set and
                    # the log without end.
                    self._log("warning", "unknown_statuses_not_logged", after=MAX_UNKNOWN_STATUSES)
        if self._aimd.clean(now):
            self._set_rate(self._aimd.rate)

    def _set_rate(self, rate: float) -> None:
        """Book at *rate*, less the headroom."""
        self._budget.set_rate(paced(rate))

    def _pause(self, now: float, until: float, reason: str) -> None:
        """Hold every request until *until*, as a Retry-After asked."""
        if until <= self._paused_until:
            return
        if until >= self.deadline_at:
            # Sleeping through the pause could only end at the deadline: end the ids now.
            self._log("warning", "pause_outlasts_deadline", seconds=round(until - now, 3))
            self._actions.append(Signal.CUT_SHORT)
            return
        self.stats.paused_s += until - max(now, self._paused_until)
        self._paused_until = until
        if self._shared:
            self._share_pause = until - now
        self._log("info", "run_paused", seconds=round(until - now, 3), reason=reason)

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self._actions.append(Log(level, event, fields))

    def __repr__(self) -> str:
        return (
            f"Scheduler(queued={len(self._queue)}, in_flight={len(self._in_flight)},"
            f" held={self._held!r}, paused_until={self._paused_until!r})"
        )
