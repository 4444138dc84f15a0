"""TimingWheel: never early, at most one bucket late, FIFO within a bucket."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll._core.schedule import TimingWheel

FAST = settings(max_examples=200, deadline=None)


class Unorderable:
    """An item that refuses comparison, as the engine's slots may."""

    def __lt__(self, other: object) -> bool:
        raise AssertionError("items must never be compared")


def test_empty_wheel() -> None:
    """An empty wheel has no next due time and nothing to pop."""
    wheel: TimingWheel[str] = TimingWheel()
    assert (len(wheel), wheel.next_due(), wheel.pop_due(1e9), wheel.pop_all()) == (
        0,
        None,
        None,
        [],
    )


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=300), st.floats(0, 110))
@FAST
def test_timing_wheel_never_early_and_at_most_one_resolution_late(
    dues: list[float], now: float
) -> None:
    """The wheel hands out exactly the items due by now (give or take one bucket), never early."""
    wheel: TimingWheel[int] = TimingWheel(resolution=0.01)
    for i, due in enumerate(dues):
        wheel.push(due, i)
    out = []
    while (item := wheel.pop_due(now)) is not None:
        out.append(item)
    assert all(dues[i] <= now + 1e-9 for i in out)  # never early
    assert {i for i, due in enumerate(dues) if due <= now - 0.01} <= set(out)  # at most 1 late
    assert len(wheel) == len(dues) - len(out)
    rest = wheel.pop_all()
    assert sorted(out + rest) == list(range(len(dues)))
    assert len(wheel) == 0


def test_timing_wheel_is_fifo_within_a_bucket_and_ordered_across() -> None:
    """Items in one bucket come out in push order; earlier buckets first."""
    wheel: TimingWheel[Unorderable | str] = TimingWheel(resolution=1.0)
    a, b = Unorderable(), Unorderable()
    wheel.push(2.5, "late")
    wheel.push(1.2, a)
    wheel.push(1.1, b)
    assert wheel.next_due() == 2.0
    assert [wheel.pop_due(10.0) for _ in range(3)] == [a, b, "late"]
    assert wheel.pop_due(10.0) is None
