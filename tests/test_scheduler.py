"""The scheduler's rules on a fake clock: no event loop, no sockets, no real time."""

from __future__ import annotations

import math
from dataclasses import replace
from random import Random

import pytest
from helpers import FAST, FakeClock

from batchpoll._core.budget import LocalBudget, StoreBudget
from batchpoll._core.config import Settings
from batchpoll._core.lifecycle import Slot, note_sent
from batchpoll._core.ratelimit import paced
from batchpoll._core.scheduler import (
    MAX_UNKNOWN_STATUSES,
    Action,
    Emit,
    Log,
    Scheduler,
    SharePause,
    Signal,
    Wait,
)
from batchpoll._core.stats import RunStats
from batchpoll.records import Answer, Outcome, Record, Throttled, Transient

SLOW = replace(FAST, concurrency=4, rate=10.0, burst=1, interval=1.0, max_interval=4.0)


def answer(status: str) -> Answer:
    return Answer(status=status, mode=None, session_id=None, result=None, error=None)


RUNNING, DONE = answer("in_progress"), answer("completed")


class Run:
    """A scheduler with its budget and stats, at the fake clock's time."""

    def __init__(
        self,
        clock: FakeClock,
        settings: Settings = SLOW,
        *,
        store: bool = False,
        shared: bool = False,
    ) -> None:
        self.clock = clock
        self.rates: list[float] = []
        self.local = LocalBudget(settings.rate, settings.burst)
        self.store = StoreBudget(self.rates.append)
        self.stats = RunStats(fail_on=settings.fail_on)
        self.sched = Scheduler.for_run(
            settings,
            self.store if store else self.local,
            now=clock(),
            wall_now=1_700_000_000.0,
            stats=self.stats,
            rng=Random(7),
            shared=shared,
        )
        self.pending: list[str] = []
        self.started = clock()

    def read(self, *pids: str, done: bool = True) -> None:
        """Feed ids as the engine does: one whenever the scheduler wants one."""
        self.pending.extend(pids)
        self.input_ended = done

    def next(self) -> Action:
        while self.sched.wants_new and self.pending:
            self.sched.add_new(self.started, self.pending.pop(0))
        if self.sched.wants_new and not self.pending and getattr(self, "input_ended", False):
            self.sched.input_done()
        return self.sched.next(self.clock())

    def send(self) -> Slot:
        """The next action, which must be a slot to send; noted as sent, as a worker does."""
        action = self.next()
        assert isinstance(action, Slot), action
        note_sent(action, self.clock())
        return action

    def until_wait(self) -> tuple[list[Action], Action]:
        """Every action up to the first that is not a record or a log line."""
        seen: list[Action] = []
        while isinstance(action := self.next(), Emit | Log):
            seen.append(action)
        return seen, action

    def back(self, slot: Slot, outcome: Outcome) -> None:
        self.sched.result(slot, outcome, self.clock())


def records(actions: list[Action]) -> list[Record]:
    return [a.record for a in actions if isinstance(a, Emit)]


def events(actions: list[Action]) -> list[str]:
    return [a.event for a in actions if isinstance(a, Log)]


def test_new_ids_go_in_input_order_then_done(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a", "b", "c")
    sent = [run.send() for _ in range(3)]
    assert [s.pid for s in sent] == ["a", "b", "c"]
    for slot in sent:
        run.back(slot, DONE)
    seen, last = run.until_wait()
    assert [r.progress_id for r in records(seen)] == ["a", "b", "c"]
    assert all(r.status == "completed" and r.polls == 1 for r in records(seen))
    assert last is Signal.DONE


def test_a_new_id_goes_before_a_repoll_that_fell_due_later(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("old", done=False)
    old = run.send()
    run.back(old, RUNNING)
    clock.advance(10.0)  # the re-poll of "old" is overdue now
    run.read("new", done=True)  # but "new" has been due since the run started
    assert run.send().pid == "new"
    assert run.send() is old


def test_repolls_come_earliest_due_first_and_wait_for_their_time(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10, interval=1.0, max_interval=1.0))
    run.read("a", "b")
    a, b = run.send(), run.send()
    run.back(b, RUNNING)  # b answered first: due again first
    clock.advance(0.3)
    run.back(a, RUNNING)
    action = run.next()
    assert isinstance(action, Wait)
    # Jitter of up to 20% around the 1 s interval, after b's answer at t0.
    assert clock.now + 0.5 <= action.until <= clock.now + 0.95
    clock.now = action.until + 0.001
    assert run.send() is b


def test_no_more_than_concurrency_in_flight(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, concurrency=2, rate=1000.0, burst=10))
    run.read("a", "b", "c")
    a, _ = run.send(), run.send()
    assert run.next() == Wait(math.inf)
    assert run.stats.in_flight == 2
    run.back(a, DONE)
    seen, action = run.until_wait()
    assert records(seen)[0].progress_id == "a"
    assert isinstance(action, Slot)
    assert action.pid == "c"


def test_the_local_budget_spaces_requests_at_the_paced_rate(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=10.0, burst=1))
    run.read("a", "b", "c")
    assert run.send().pid == "a"
    gap = 1 / paced(10.0)
    action = run.next()
    assert action == Wait(pytest.approx(clock.now + gap))
    clock.now = action.until + 0.0004  # the timer fires a little late
    assert run.send().pid == "b"
    # Booked when it became sendable, not when the timer fired: the lateness is forgiven.
    action = run.next()
    assert action == Wait(pytest.approx(clock.now - 0.0004 + gap))


def test_a_slot_sendable_when_picked_is_booked_at_once(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=10.0, burst=1))
    run.read("a", "b")
    run.send()
    clock.advance(5.0)  # long idle: b is sendable the moment it is picked
    run.send()
    assert run.next() == Wait(math.inf)  # both in flight, nothing left to pick
    assert run.local.limiter.wait_time(clock.now) == pytest.approx(1 / paced(10.0))


def test_a_retry_after_pauses_every_request_and_is_counted(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a", "b", done=False)
    a = run.send()
    clock.advance(0.1)
    run.back(a, Throttled(retry_after=2.5, reason="HTTP 429"))
    seen, action = run.until_wait()
    assert "run_paused" in events(seen)
    assert action == Wait(pytest.approx(clock.now + 2.5))  # b waits for the pause
    assert run.stats.throttled == 1
    assert run.stats.paused_s == pytest.approx(2.5)
    clock.advance(1.0)
    assert run.next() == Wait(pytest.approx(clock.now + 1.5))  # still held, not sent
    clock.advance(1.5)
    assert run.send().pid == "b"
    assert run.send() is a  # due again at once, after the pause


def test_a_shorter_pause_inside_a_longer_one_changes_nothing(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a", "b")
    a, b = run.send(), run.send()
    run.back(a, Throttled(retry_after=5.0, reason="HTTP 429"))
    clock.advance(1.0)
    run.back(b, Throttled(retry_after=2.0, reason="HTTP 429"))  # ends at +3, inside +5
    seen, _ = run.until_wait()
    assert events(seen) == ["run_paused"]
    assert run.stats.paused_s == pytest.approx(5.0)


def test_an_overlapping_pause_counts_only_its_extra_time(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a", "b")
    a, b = run.send(), run.send()
    run.back(a, Throttled(retry_after=2.0, reason="HTTP 429"))
    clock.advance(1.0)
    run.back(b, Throttled(retry_after=3.0, reason="HTTP 429"))  # until +4: 2 s more
    assert run.stats.paused_s == pytest.approx(4.0)


def test_a_pause_only_shared_when_the_budget_is(clock: FakeClock) -> None:
    for shared in (False, True):
        run = Run(clock, replace(SLOW, rate=1000.0, burst=10), shared=shared)
        run.read("a")
        a = run.send()
        run.back(a, Throttled(retry_after=2.0, reason="HTTP 429"))
        _, action = run.until_wait()
        assert (action == SharePause(pytest.approx(2.0))) is shared


def test_a_pause_past_the_deadline_cuts_the_run_short(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10, deadline=10.0))
    assert run.sched.deadline_at == clock.now + 10.0
    run.read("a")
    a = run.send()
    clock.advance(1.0)
    run.back(a, Throttled(retry_after=9.0, reason="HTTP 429"))
    seen, action = run.until_wait()
    assert events(seen) == ["pause_outlasts_deadline"]
    assert action is Signal.CUT_SHORT
    assert run.stats.paused_s == 0


def test_expire_all_times_out_every_id_without_a_record(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, concurrency=3, rate=1000.0, burst=10, deadline=5.0))
    run.read("fin", "flying", "queued", "held", "unread", done=False)
    fin, flying, queued = run.send(), run.send(), run.send()
    clock.advance(0.1)
    run.back(queued, Throttled(retry_after=1.0, reason="HTTP 429"))
    seen, action = run.until_wait()
    assert events(seen) == ["run_paused"]
    assert isinstance(action, Wait)  # "held" was picked and waits out the pause
    run.sched.add_new(run.started, "unread")  # read, not yet picked
    run.back(fin, DONE)  # decided, not yet handed to the sink
    actions = run.sched.expire_all(5.0)
    assert events(actions) == ["deadline_reached"]
    got = {r.progress_id: r.status for r in records(actions)}
    assert got == {
        "fin": "completed",
        "flying": "timed_out",
        "queued": "timed_out",
        "held": "timed_out",
        "unread": "timed_out",
    }
    assert records(actions)[0].progress_id == "fin"
    assert run.stats.in_flight == 0
    assert flying.polls == 1
    assert run.sched.timed_out("late").status == "timed_out"


def test_an_id_past_its_timeout_ends_without_a_request(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10, timeout=3.0))
    run.read("a")
    a = run.send()
    run.back(a, RUNNING)
    action = run.next()
    assert isinstance(action, Wait)
    clock.advance(3.0)
    seen, last = run.until_wait()
    (rec,) = records(seen)
    assert (rec.status, rec.polls) == ("timed_out", 1)
    assert last is Signal.DONE


def test_a_429_without_retry_after_halves_the_rate_then_clean_answers_win_it_back(
    clock: FakeClock,
) -> None:
    run = Run(clock, replace(SLOW, concurrency=8, rate=100.0, burst=10))
    run.read(*(f"p{i}" for i in range(5)))
    slots = [run.send() for _ in range(5)]
    run.back(slots[0], Throttled(retry_after=None, reason="HTTP 429"))
    seen, _ = run.until_wait()
    assert "rate_lowered" in events(seen)
    assert run.local.limiter.rate == pytest.approx(paced(50.0))
    assert run.stats.lowest_rate == pytest.approx(50.0)
    run.back(slots[1], Throttled(retry_after=None, reason="HTTP 429"))  # within the cooldown
    assert run.local.limiter.rate == pytest.approx(paced(50.0))
    clock.advance(2.0)
    run.back(slots[2], RUNNING)
    assert paced(50.0) < run.local.limiter.rate < paced(100.0)
    clock.advance(60.0)
    run.back(slots[3], RUNNING)
    assert run.local.limiter.rate == pytest.approx(paced(100.0))
    assert run.stats.lowest_rate == pytest.approx(50.0)


def test_transient_failures_are_counted_by_cause_and_retried(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a")
    a = run.send()
    run.back(a, Transient(reason="HTTP 503"))
    seen, action = run.until_wait()
    assert events(seen) == ["poll_failed"]
    assert run.stats.retries == 1
    assert run.stats.retry_causes["5xx"] == 1
    assert isinstance(action, Wait)
    assert action.until > clock.now


def test_each_unknown_status_is_logged_once_up_to_the_cap(clock: FakeClock) -> None:
    n = MAX_UNKNOWN_STATUSES + 5
    run = Run(clock, replace(SLOW, concurrency=n + 1, rate=1e5, burst=2 * n))
    run.read(*(f"p{i}" for i in range(n + 1)))
    slots = [run.send() for _ in range(n + 1)]
    for i, slot in enumerate(slots):
        run.back(slot, answer(f"weird-{min(i, n - 1)}"))
    seen, _ = run.until_wait()
    said = events(seen)
    assert said.count("unknown_status") == MAX_UNKNOWN_STATUSES
    assert said.count("unknown_statuses_not_logged") == 1


def test_a_store_budget_asks_once_per_request_and_keeps_its_grant(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=50.0, burst=1), store=True)
    assert run.rates == [pytest.approx(paced(50.0))]  # the store is told the paced rate
    run.read("a", "b")
    assert run.next() is Signal.ASK_GRANT
    run.sched.granted(clock.now + 0.2)
    assert run.next() == Wait(pytest.approx(clock.now + 0.2))
    clock.advance(0.1)  # woken early (a result, say): the grant still holds, no new ask
    assert run.next() == Wait(pytest.approx(clock.now + 0.1))
    clock.advance(0.1)
    assert run.send().pid == "a"
    assert run.next() is Signal.ASK_GRANT  # the next request needs its own grant


def test_a_pause_voids_a_grant_not_yet_used(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=50.0, burst=1), store=True, shared=True)
    run.read("a", "b")
    assert run.next() is Signal.ASK_GRANT
    run.sched.granted(clock.now)
    a = run.send()
    assert run.next() is Signal.ASK_GRANT
    run.sched.granted(clock.now + 0.5)
    run.back(a, Throttled(retry_after=1.0, reason="HTTP 429"))
    _, action = run.until_wait()
    assert action == SharePause(pytest.approx(1.0))
    assert run.next() == Wait(pytest.approx(clock.now + 1.0))
    clock.advance(1.0)
    assert run.next() is Signal.ASK_GRANT  # the old grant fell inside the pause


def test_drain_hands_over_what_was_decided(clock: FakeClock) -> None:
    run = Run(clock, replace(SLOW, rate=1000.0, burst=10))
    run.read("a", "b")
    a, b = run.send(), run.send()
    run.back(a, DONE)
    run.back(b, Transient(reason="ServerDisconnectedError: gone"))
    drained = run.sched.drain()
    assert [r.progress_id for r in records(drained)] == ["a"]
    assert events(drained) == ["poll_failed"]
    assert run.sched.drain() == []


def test_add_new_only_when_wanted(clock: FakeClock) -> None:
    run = Run(clock)
    run.sched.add_new(clock.now, "a")
    assert not run.sched.wants_new
    with pytest.raises(AssertionError):
        run.sched.add_new(clock.now, "b")
