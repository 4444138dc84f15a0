"""AIMD on the effective rate, with time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpoll._core.adaptive import Aimd


def test_a_429_halves_the_rate_once_per_cooldown() -> None:
    """The first 429 halves the rate; more within the cool-down are the same overload."""
    aimd = Aimd(100.0)
    assert aimd.throttled(0.0)
    assert aimd.rate == 50.0
    assert not aimd.throttled(0.5)
    assert aimd.rate == 50.0
    assert aimd.throttled(1.5)
    assert aimd.rate == 25.0
    assert aimd.lowest == 25.0


def test_clean_answers_climb_back_linearly_to_the_ceiling() -> None:
    """After a cut the rate climbs by a fixed amount per second of clean answers, up to --rate."""
    aimd = Aimd(100.0, recover_s=10.0)
    aimd.throttled(0.0)
    aimd.clean(1.0)
    assert aimd.rate == pytest.approx(50.0 + (100.0 - 100 / 64) / 10)
    for t in range(2, 30):
        aimd.clean(float(t))
    assert aimd.rate == 100.0
    assert aimd.lowest == 50.0


def test_rate_never_drops_below_the_floor() -> None:
    """However many 429s, the rate stays at or above ceiling/64."""
    aimd = Aimd(64.0)
    for t in range(100):
        aimd.throttled(float(t * 2))
    assert aimd.rate == 1.0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=200), st.floats(0.1, 1e4))
def test_rate_stays_between_floor_and_ceiling(
    events: list[tuple[bool, float]], ceiling: float
) -> None:
    """Any sequence of 429s and clean answers keeps floor <= rate <= ceiling."""
    aimd, now = Aimd(ceiling), 0.0
    for throttled, gap in events:
        now += gap
        aimd.throttled(now) if throttled else aimd.clean(now)
        assert aimd.floor <= aimd.rate <= aimd.ceiling
        assert aimd.lowest <= aimd.rate
