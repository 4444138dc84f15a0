"""The two budgets behind the scheduler, on a fake clock."""

from __future__ import annotations

import pytest
from helpers import FakeClock

from batchpoll._core.budget import TIMER_SLACK_S, LocalBudget, StoreBudget


@pytest.mark.parametrize(("rate", "burst"), [(10.0, 1), (200.0, 3), (4000.0, 5)])
def test_local_budget_lets_a_burst_go_then_one_per_interval(
    clock: FakeClock, rate: float, burst: int
) -> None:
    budget = LocalBudget(rate, burst)
    for _ in range(burst):
        assert budget.ready_at(clock.now) == pytest.approx(clock.now, abs=1e-9)
        budget.sent(clock.now, held=False)
    assert budget.ready_at(clock.now) == pytest.approx(clock.now + 1 / rate)


@pytest.mark.parametrize("late", [0.0002, 0.0009, 0.005])
def test_a_held_request_is_forgiven_its_timer_lateness_up_to_the_slack(
    clock: FakeClock, late: float
) -> None:
    rate = 100.0
    budget = LocalBudget(rate, 1)
    budget.sent(clock.now, held=False)
    sendable = budget.ready_at(clock.now)
    clock.now = sendable + late
    budget.sent(clock.now, held=True)
    forgiven = min(late, TIMER_SLACK_S)
    assert budget.ready_at(clock.now) == pytest.approx(clock.now - forgiven + 1 / rate)


def test_a_request_not_held_is_booked_when_sent(clock: FakeClock) -> None:
    budget = LocalBudget(100.0, 1)
    budget.sent(clock.now, held=False)
    clock.now = budget.ready_at(clock.now) + 0.0005
    budget.sent(clock.now, held=False)
    assert budget.ready_at(clock.now) == pytest.approx(clock.now + 0.01)


def test_the_slack_is_never_more_than_one_interval(clock: FakeClock) -> None:
    rate = 5000.0  # an interval of 0.2 ms, shorter than the timer slack
    budget = LocalBudget(rate, 1)
    budget.sent(clock.now, held=False)
    clock.now = budget.ready_at(clock.now) + 0.003
    budget.sent(clock.now, held=True)
    assert budget.ready_at(clock.now) == pytest.approx(clock.now - 1 / rate + 1 / rate)


def test_local_set_rate_spaces_later_requests(clock: FakeClock) -> None:
    budget = LocalBudget(10.0, 1)
    budget.set_rate(40.0)
    budget.sent(clock.now, held=False)
    assert budget.ready_at(clock.now) == pytest.approx(clock.now + 0.025)
    budget.void()  # nothing to void locally
    with pytest.raises(AssertionError):
        budget.grant(clock.now)


def test_store_budget_asks_holds_and_voids(clock: FakeClock) -> None:
    told: list[float] = []
    budget = StoreBudget(told.append)
    assert budget.ready_at(clock.now) is None
    budget.grant(clock.now + 0.3)
    assert budget.ready_at(clock.now) == clock.now + 0.3
    budget.void()
    assert budget.ready_at(clock.now) is None
    budget.grant(clock.now)
    budget.sent(clock.now, held=True)
    assert budget.ready_at(clock.now) is None  # one grant, one request
    budget.set_rate(12.5)
    assert told == [12.5]
