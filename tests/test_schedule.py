"""DueQueue: earliest due first, FIFO among equal due times, nothing before it is due."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll.schedule import DueQueue, TimingWheel

FAST = settings(max_examples=200, deadline=None)


class Unorderable:
    """An item that refuses comparison, as the engine's slots may."""

    def __lt__(self, other: object) -> bool:
        raise AssertionError("items must never be compared")


def test_empty_queue() -> None:
    """An empty queue has no next due time and nothing to pop."""
    queue: DueQueue[str] = DueQueue()
    assert (len(queue), queue.next_due(), queue.pop_due(1e9), queue.pop_all()) == (
        0,
        None,
        None,
        [],
    )


def test_earliest_comes_first() -> None:
    """Items come out in due order, whatever order they went in."""
    queue: DueQueue[str] = DueQueue()
    for due, item in [(3.0, "c"), (1.0, "a"), (2.0, "b")]:
        queue.push(due, item)
    assert queue.next_due() == 1.0
    assert [queue.pop_due(10.0) for _ in range(3)] == ["a", "b", "c"]


def test_equal_due_times_are_fifo_and_items_never_compared() -> None:
    """Items due at the same time come out in push order without being compared."""
    queue: DueQueue[Unorderable] = DueQueue()
    items = [Unorderable() for _ in range(5)]
    for item in items:
        queue.push(5.0, item)
    assert [queue.pop_due(5.0) for _ in range(5)] == items


def test_pop_due_respects_now() -> None:
    """pop_due returns nothing before the earliest due time, and the item from then on."""
    queue: DueQueue[str] = DueQueue()
    queue.push(10.0, "later")
    assert queue.pop_due(9.999) is None
    assert len(queue) == 1
    assert queue.pop_due(10.0) == "later"
    assert len(queue) == 0


def test_pop_all_empties_in_due_order() -> None:
    """pop_all returns every item earliest first, FIFO on ties, and leaves the queue empty."""
    queue: DueQueue[str] = DueQueue()
    for due, item in [(2.0, "c"), (1.0, "a"), (2.0, "d"), (1.0, "b")]:
        queue.push(due, item)
    assert queue.pop_all() == ["a", "b", "c", "d"]
    assert (len(queue), queue.next_due()) == (0, None)


def test_repr_shows_size_and_next_due() -> None:
    """The repr shows how many items wait and when the next is due."""
    queue: DueQueue[int] = DueQueue()
    queue.push(4.5, 1)
    queue.push(7.0, 2)
    assert repr(queue) == "DueQueue(size=2, next_due=4.5)"


@FAST
@given(
    dues=st.lists(st.integers(min_value=0, max_value=20), max_size=60),
    now=st.integers(min_value=-1, max_value=21),
)
def test_pop_due_drains_exactly_the_due_items_in_order(dues: list[int], now: int) -> None:
    """Popping until None yields the items due by `now`, sorted by (due, push order)."""
    queue: DueQueue[int] = DueQueue()
    for index, due in enumerate(dues):
        queue.push(float(due), index)
    popped = []
    while (item := queue.pop_due(float(now))) is not None:
        popped.append(item)
    in_order = sorted(range(len(dues)), key=lambda i: (dues[i], i))
    assert popped == [i for i in in_order if dues[i] <= now]
    assert queue.pop_all() == [i for i in in_order if dues[i] > now]


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
