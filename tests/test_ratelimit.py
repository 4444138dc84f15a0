"""GCRA: at most rate * t + burst requests in any window of t seconds, on a fake clock."""

from __future__ import annotations

import itertools
import math

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll._core.ratelimit import HEADROOM, Gcra, paced
from batchpoll.simulator import max_in_window

FAST = settings(max_examples=200, deadline=None)


def sends(limiter: Gcra, times: list[float]) -> list[float]:
    """When each request booked at ``times`` goes out."""
    return [now + limiter.reserve(now) for now in times]


def test_first_request_goes_now_then_one_per_interval() -> None:
    """With burst 1 the first request waits 0 and each next one 1/rate longer."""
    clock, limiter = FakeClock(), Gcra(rate=10, burst=1)
    assert limiter.reserve(clock()) == 0
    assert limiter.reserve(clock()) == pytest.approx(0.1)
    assert limiter.reserve(clock()) == pytest.approx(0.2)


def test_fresh_limiter_lets_burst_not_rate_through() -> None:
    """A fresh limiter sends `burst` requests at once, not `rate` of them, then paces."""
    clock, limiter = FakeClock(), Gcra(rate=100, burst=3)
    waits = [limiter.reserve(clock()) for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0, 0.01, 0.02])


def test_idle_time_frees_capacity_up_to_burst_only() -> None:
    """However long the limiter idles, only `burst` requests go back to back afterwards."""
    clock, limiter = FakeClock(), Gcra(rate=10, burst=2)
    sends(limiter, [clock()] * 4)
    clock.advance(3600)
    assert [limiter.reserve(clock()) for _ in range(3)] == pytest.approx([0, 0, 0.1])


def test_partial_idle_frees_partial_capacity() -> None:
    """After idling one interval past the backlog, one request goes at once again."""
    clock, limiter = FakeClock(), Gcra(rate=10, burst=1)
    limiter.reserve(clock())
    clock.advance(0.1)
    assert limiter.reserve(clock()) == 0
    assert limiter.reserve(clock()) == pytest.approx(0.1)


def test_wait_time_peeks_without_booking() -> None:
    """wait_time reports what reserve would return, and books nothing."""
    clock, limiter = FakeClock(), Gcra(rate=4, burst=1)
    limiter.reserve(clock())
    assert limiter.wait_time(clock()) == pytest.approx(0.25)
    assert limiter.wait_time(clock()) == pytest.approx(0.25)
    assert limiter.reserve(clock()) == pytest.approx(0.25)
    clock.advance(10)
    assert limiter.wait_time(clock()) == 0


def test_negative_clock_readings_are_fine() -> None:
    """A monotonic clock may read below zero; a fresh limiter still does not wait."""
    assert Gcra(rate=1).reserve(-12345.0) == 0


def test_set_rate_spaces_later_bookings_only() -> None:
    """A new rate keeps existing bookings and spaces the following ones by its interval."""
    clock, limiter = FakeClock(), Gcra(rate=10)
    assert sends(limiter, [clock()] * 2) == pytest.approx([1000.0, 1000.1])
    limiter.set_rate(1)
    assert limiter.rate == 1
    assert sends(limiter, [clock()] * 2) == pytest.approx([1000.2, 1001.2])


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0)],
    ids=["zero-rate", "negative-rate", "infinite-rate", "nan-rate", "zero-burst"],
)
def test_rejects_nonsense(rate: float, burst: int) -> None:
    """A rate that is not finite and positive, or a burst below 1, is refused."""
    with pytest.raises(ValueError, match=r"rate|burst"):
        Gcra(rate, burst)


def test_repr_shows_live_state() -> None:
    """The repr names rate, burst and the theoretical arrival time as it moves."""
    limiter = Gcra(rate=2, burst=3)
    assert repr(limiter) == "Gcra(rate=2, burst=3, tat=-inf)"
    limiter.reserve(10.0)
    assert repr(limiter) == "Gcra(rate=2, burst=3, tat=10.5)"


@FAST
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=5), max_size=120),
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
)
def test_never_more_than_rate_times_t_plus_burst(
    gaps: list[float], rate: float, burst: int
) -> None:
    """For any nondecreasing call times, any window of t seconds holds <= rate * t + burst sends."""
    clock, limiter = FakeClock(), Gcra(rate, burst)
    times = []
    for gap in gaps:
        clock.advance(gap)
        times.append(clock())
    sent = sends(limiter, times)
    assert all(s >= t for s, t in zip(sent, times, strict=True))
    assert sent == sorted(sent)
    # The tightest window holding sends i..j is [sent[i], sent[j]]. The slack covers float
    # rounding as tat adds up 1/rate a hundred times; a real breach is a whole extra request.
    for i, start in enumerate(sent):
        for j in range(i, len(sent)):
            assert j - i + 1 <= rate * (sent[j] - start) + burst + 1e-6


def _late_sender(limiter: Gcra, lateness: list[float], slack: float) -> list[float]:
    """A sender that sleeps until each request is sendable and wakes ``lateness[i]`` late."""
    clock, sent = FakeClock(), []
    for late in lateness:
        clock.advance(limiter.wait_time(clock()) + late)
        assert limiter.wait_time(clock()) == 0
        limiter.book_late(clock(), slack)
        sent.append(clock())
    return sent


def test_lateness_within_the_slack_costs_no_rate() -> None:
    """Woken 0.4 ms late every time with 0.5 ms of slack, 1,000 sends still take 1000/rate s."""
    sent = _late_sender(Gcra(rate=2000, burst=1), [0.0004] * 1000, slack=0.0005)
    assert sent[-1] - sent[0] == pytest.approx(999 / 2000, abs=0.0005)


def test_lateness_beyond_the_slack_loses_only_the_excess() -> None:
    """Woken 1.5 ms late with 0.5 ms of slack, each send loses the extra millisecond only."""
    sent = _late_sender(Gcra(rate=2000, burst=1), [0.0015] * 100, slack=0.0005)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps == pytest.approx([0.0005 + 0.001] * 99)
    booked_at_now = _late_sender(Gcra(rate=2000, burst=1), [0.0015] * 100, slack=0.0)
    assert booked_at_now[-1] - booked_at_now[0] > sent[-1] - sent[0]


@FAST
@given(
    rate=st.floats(min_value=1, max_value=10_000),
    burst=st.integers(min_value=1, max_value=20),
    lateness=st.lists(st.floats(min_value=0, max_value=0.01), min_size=1, max_size=300),
)
def test_booking_late_bounds_every_window(rate: float, burst: int, lateness: list[float]) -> None:
    """Any window of t s holds at most rate * (t + slack) + burst sends, however late they woke."""
    slack = min(0.001, 1 / rate)
    sent = _late_sender(Gcra(rate=rate, burst=burst), lateness, slack)
    window = 1.0
    for i, start in enumerate(sent):
        inside = sum(1 for t in sent[i:] if t < start + window)
        assert inside <= rate * (window + slack) + burst + 1e-6


@FAST
@given(
    rate=st.floats(min_value=1, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    lateness=st.lists(st.floats(min_value=0, max_value=0.01), min_size=1, max_size=20),
    split=st.floats(min_value=0, max_value=1),
)
def test_paced_rate_holds_where_requests_arrive(
    rate: float, burst: int, lateness: list[float], split: float
) -> None:
    """Paced, sends that wake late and then arrive up to 9 ms unevenly keep rate + burst a second.

    9 ms is the headroom's 10 ms for a one-second window less the engine's 1 ms of slack. The
    worst unevenness for a window: the requests at its start arrive late, the rest on time.
    """
    slack = min(0.001, 1 / rate)
    n = int(rate * 2) + burst + 2
    wakes = list(itertools.islice(itertools.cycle(lateness), n))
    sent = _late_sender(Gcra(rate=paced(rate), burst=burst), wakes, slack)
    late = int(split * n)
    arrived = [t + (HEADROOM - slack if i < late else 0.0) for i, t in enumerate(sent)]
    assert max_in_window(arrived) <= rate + burst + 1e-6


def test_exact_pacing_would_not_hold_there() -> None:
    """Without the headroom, 5 ms of arrival jitter at 2,000/s puts 10 more in one second."""
    sent = _late_sender(Gcra(rate=2000, burst=1), [0.0] * 2500, slack=0.001)
    # The first 50 requests arrive 5 ms late, the rest on time: a second's window gains 10.
    arrived = [t + (0.005 if i < 50 else 0.0) for i, t in enumerate(sent)]
    assert max_in_window(arrived) > 2000 + 1
