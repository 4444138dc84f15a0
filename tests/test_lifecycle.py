"""One id's life as pure rules: outcomes and a fake clock in, the next due time or a record out."""

from __future__ import annotations

from datetime import UTC, datetime
from random import Random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchpoll._core.lifecycle import (
    Policy,
    SharedMillisecond,
    Slot,
    advance,
    expired,
    finish,
    iso_utc,
    note_sent,
)
from batchpoll.records import Answer, Broken, NotFound, Record, Rejected, Throttled, Transient

POLICY = Policy(
    interval=2.0, max_interval=10.0, timeout=100.0, max_retries=3, jitter=0.0,
    wall_offset=1_700_000_000.0,
)  # fmt: skip
IN_PROGRESS = Answer(status="in_progress", mode="improve", session_id=7, result=None, error=None)
DONE = Answer(status="completed", mode="improve", session_id=7, result={"x": 1}, error=None)


def sent(slot: Slot, now: float) -> Slot:
    note_sent(slot, now)
    return slot


def test_waits_start_at_interval_and_grow_to_the_cap() -> None:
    """In-progress answers schedule the next poll at interval, x1.5 each time, capped."""
    slot, now, waits = Slot("a"), 0.0, []
    for _ in range(7):
        sent(slot, now)
        due = advance(slot, IN_PROGRESS, POLICY, now, Random(1))
        assert isinstance(due, float)
        waits.append(due - now)
        now = due
    assert waits == pytest.approx([2.0, 3.0, 4.5, 6.75, 10.0, 10.0, 10.0])


def test_jitter_only_shortens_the_wait() -> None:
    """With jitter the wait stays within [base * (1 - jitter), base]."""
    policy = Policy(interval=2.0, max_interval=10.0, timeout=100.0, max_retries=3, jitter=0.2)
    rng = Random(3)
    for _ in range(200):
        slot = sent(Slot("a"), 0.0)
        due = advance(slot, IN_PROGRESS, policy, 0.0, rng)
        assert isinstance(due, float)
        assert 1.6 <= due <= 2.0


def test_terminal_answer_ends_with_the_api_values() -> None:
    """A terminal answer ends the id with its status, mode, session, result and error."""
    slot = sent(Slot("a"), 0.0)
    advance(slot, IN_PROGRESS, POLICY, 0.0, Random())
    sent(slot, 2.0)
    rec = advance(slot, DONE, POLICY, 2.0, Random())
    assert isinstance(rec, Record)
    assert (rec.status, rec.mode, rec.session_id, rec.result) == (
        "completed",
        "improve",
        7,
        {"x": 1},
    )
    assert rec.polls == 2
    assert rec.elapsed_s == pytest.approx(2.0)
    assert rec.first_poll_at == "2023-11-14T22:13:20.000+00:00"


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [
        (NotFound(), "not_found", "HTTP 404: no such progress id"),
        (Rejected(messages="progress_id: bad"), "rejected", "progress_id: bad"),
        (Broken(reason="redirect elsewhere"), "error", "redirect elsewhere"),
    ],
    ids=["404", "400", "broken"],
)
def test_final_outcomes_end_at_once(outcome: object, status: str, error: str) -> None:
    """404, 400 and unmendable failures end the id on the first poll."""
    slot = sent(Slot("a"), 0.0)
    rec = advance(slot, outcome, POLICY, 0.0, Random())  # type: ignore[arg-type]
    assert isinstance(rec, Record)
    assert (rec.status, rec.error) == (status, error)


def test_transient_failures_back_off_then_end_as_error() -> None:
    """Transient failures are retried with backoff; the max_retries-th in a row ends the id."""
    slot, now = Slot("a"), 0.0
    for attempt in (1, 2):
        sent(slot, now)
        due = advance(slot, Transient(reason="HTTP 502"), POLICY, now, Random(attempt))
        assert isinstance(due, float)
        assert now <= due <= now + min(10.0, 2.0 * 2 ** (attempt - 1))
        now = due
    sent(slot, now)
    rec = advance(slot, Transient(reason="HTTP 502"), POLICY, now, Random())
    assert isinstance(rec, Record)
    assert rec.status == "error"
    assert rec.error == "HTTP 502 (3 attempts)"


def test_an_answer_resets_the_failure_count() -> None:
    """Only failures in a row count: an in-progress answer starts the count again."""
    slot = sent(Slot("a"), 0.0)
    for _ in range(5):
        advance(slot, Transient(reason="reset"), POLICY, 0.0, Random())
        assert slot.failures < POLICY.max_retries
        advance(slot, IN_PROGRESS, POLICY, 0.0, Random())
        assert slot.failures == 0


def test_throttle_with_retry_after_costs_no_retry() -> None:
    """A 429 with Retry-After makes the id due now (the run pauses) without counting a failure."""
    slot = sent(Slot("a"), 5.0)
    due = advance(slot, Throttled(retry_after=3.0, reason="HTTP 429"), POLICY, 5.0, Random())
    assert due == 5.0
    assert slot.failures == 0


def test_throttle_without_retry_after_backs_off_like_a_failure() -> None:
    """A 429 without Retry-After counts as a transient failure of the id."""
    slot = sent(Slot("a"), 0.0)
    advance(slot, Throttled(retry_after=None, reason="HTTP 429"), POLICY, 0.0, Random())
    assert slot.failures == 1


def test_never_scheduled_past_the_per_id_timeout() -> None:
    """The next poll is never later than the id's timeout, where it expires without a request."""
    policy = Policy(interval=2.0, max_interval=10.0, timeout=5.0, max_retries=3, jitter=0.0)
    slot = Slot("a")
    note_sent(slot, 0.0)
    slot.base = 8.0
    due = advance(slot, IN_PROGRESS, policy, 4.0, Random())
    assert due == 5.0
    assert not expired(slot, 4.9, policy)
    assert expired(slot, 5.0, policy)


def test_timed_out_record_keeps_the_last_api_status_and_failure() -> None:
    """A timed-out id keeps the API's last values, and the last failure when there was one."""
    slot = sent(Slot("a"), 0.0)
    advance(slot, IN_PROGRESS, POLICY, 0.0, Random())
    advance(slot, Transient(reason="HTTP 500"), POLICY, 1.0, Random())
    rec = finish(slot, "timed_out", POLICY)
    assert rec.last_api_status == "in_progress"
    assert rec.mode == "improve"
    assert rec.error == "last failure: HTTP 500"


def test_an_id_never_polled_has_no_times() -> None:
    """An id that never got a poll (the run's deadline came first) is written without times."""
    rec = finish(Slot("a"), "timed_out", POLICY)
    assert (rec.polls, rec.first_poll_at, rec.elapsed_s, rec.last_api_status) == (
        0,
        None,
        None,
        None,
    )
    assert not expired(Slot("a"), 1e9, POLICY)


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
@example(1_700_000_000.9995)  # rounds up to the next millisecond
@example(1_700_000_000.9999996)  # rounds up into the next second
@example(1_700_000_000.0000005)  # half a microsecond: half to even
@example(-0.5)
def test_iso_utc_writes_what_datetime_writes(epoch: float) -> None:
    """The cached formatter agrees with datetime to the character, rounding included."""
    expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    assert iso_utc(epoch) == expected
    assert iso_utc(epoch) == expected  # and again, from the cache


def test_sends_within_a_millisecond_share_one_time() -> None:
    """Times less than 1 ms after the last one returned come back as that same object."""
    shared = SharedMillisecond()
    first = shared(100.0)
    assert shared(100.0004) is first
    assert shared(100.0009) is first
    later = shared(100.0011)
    assert later == 100.0011
    assert shared(100.0015) is later
