"""When to poll next: growing intervals, full-jitter retries and Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll._core.backoff import grow, jittered, parse_retry_after, retry_delay

FAST = settings(max_examples=200, deadline=None)
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()

_positive = st.floats(min_value=1e-3, max_value=1e6)


def test_grow_starts_at_first_then_multiplies() -> None:
    """The first interval is `first`; each next one is the previous times `factor`, up to `cap`."""
    waits = [grow(None, first=3, factor=2, cap=30)]
    for _ in range(4):
        waits.append(grow(waits[-1], first=3, factor=2, cap=30))
    assert waits == [3, 6, 12, 24, 30]


@FAST
@given(first=_positive, factor=st.floats(min_value=1, max_value=100), cap=_positive)
def test_grow_never_exceeds_cap_and_never_shrinks(first: float, factor: float, cap: float) -> None:
    """Grown intervals stay at or below the cap and never decrease, however many polls."""
    wait = grow(None, first=first, factor=factor, cap=cap)
    for _ in range(500):
        nxt = grow(wait, first=first, factor=factor, cap=cap)
        assert wait <= nxt <= cap
        wait = nxt


@FAST
@given(base=_positive, jitter=st.floats(min_value=0, max_value=1), seed=st.integers())
def test_jittered_stays_between_shortened_and_base(base: float, jitter: float, seed: int) -> None:
    """Jitter only shortens: the result lies in [base * (1 - jitter), base]."""
    wait = jittered(base, jitter=jitter, rng=random.Random(seed))
    assert base * (1 - jitter) * (1 - 1e-12) <= wait <= base


def test_jittered_without_jitter_is_base() -> None:
    """A jitter of 0 leaves the interval as it is."""
    assert jittered(7.5, jitter=0.0, rng=random.Random(1)) == 7.5


@FAST
@given(
    failures=st.one_of(st.integers(1, 2000), st.just(10**6), st.just(10**100)),
    base=_positive,
    cap=_positive,
    seed=st.integers(),
)
def test_retry_delay_within_zero_and_cap(failures: int, base: float, cap: float, seed: int) -> None:
    """Any failure count, however large, gives a delay in [0, min(cap, base * 2**(failures-1))]."""
    delay = retry_delay(failures, base=base, cap=cap, rng=random.Random(seed))
    assert 0 <= delay <= cap
    if failures <= 20:
        assert delay <= base * 2 ** (failures - 1)


def test_retry_delay_spreads_over_the_whole_range() -> None:
    """Full jitter: delays after the third failure cover most of [0, 4 * base]."""
    rng = random.Random(7)
    delays = [retry_delay(3, base=1.0, cap=100.0, rng=rng) for _ in range(1000)]
    assert min(delays) < 0.2
    assert 3.8 < max(delays) <= 4.0


def test_retry_delay_rejects_zero_failures() -> None:
    """There is no retry delay before the first failure."""
    with pytest.raises(ValueError, match="failures"):
        retry_delay(0, base=1.0, cap=10.0, rng=random.Random(0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("999999", 6 * 3600.0),
        ("9" * 5000, 6 * 3600.0),
        ("0" * 5000 + "5", 5.0),
        ("Thu, 02 Jan 2025 03:05:05 GMT", 60.0),
        ("Thu, 02 Jan 2025 03:05:05 -0000", 60.0),
        ("Thu, 02 Jan 2025 04:05:05 +0100", 60.0),
        ("Thu, 02 Jan 2025 03:03:35 GMT", 0.0),
        ("Mon, 01 Jan 1990 00:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 6 * 3600.0),
        ("86400", 6 * 3600.0),
        ("99999999999999999999", 6 * 3600.0),
        ("Sat, 04 Jan 2025 03:04:05 GMT", 6 * 3600.0),
        ("inf", 6 * 3600.0),
        ("+Infinity", 6 * 3600.0),
        ("1e400", 6 * 3600.0),
        ("1e3", 1000.0),
        ("+5", 5.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-0", 0.0),
        ("1e-400", 0.0),
    ],
    ids=[
        "seconds",
        "seconds-padded",
        "zero",
        "float",
        "seconds-capped",
        "huge-digit-string-capped",
        "leading-zeros",
        "date-future",
        "date-no-zone-is-utc",
        "date-other-zone",
        "date-just-past",
        "date-long-past",
        "date-far-future-capped",
        "a-day-capped",
        "twenty-digits-capped",
        "date-two-days-ahead-capped",
        "infinity-capped",
        "signed-infinity-capped",
        "overflowing-float-capped",
        "exponent",
        "plus-sign",
        "no-integer-part",
        "no-fraction-digits",
        "negative-zero-is-zero",
        "underflowing-float-is-zero",
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    """Any non-negative number or HTTP date is float seconds from now, at most the cap."""
    wait = parse_retry_after(value, now=NOW)
    assert type(wait) is float
    assert wait == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    ["", "  ", "soon", "-5", "-0.5", "nan", "-inf", "-1e400", "12abc", "²", "Thu, 32 Foo 2025",
     "1_000", "\u0661\u0662", "0x10", "5 5", "infinit", "1e", ".", "-nan"],
    ids=[
        "empty",
        "blank",
        "word",
        "negative",
        "negative-float",
        "nan",
        "negative-infinity",
        "negative-overflow",
        "trailing-junk",
        "unicode-digit",
        "bad-date",
        "underscore",
        "arabic-indic-digits",
        "hex",
        "two-numbers",
        "misspelt-infinity",
        "exponent-without-digits",
        "lone-dot",
        "negative-nan",
    ],
)  # fmt: skip
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    """A value that is neither a non-negative number nor an HTTP date gives None."""
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_honours_custom_cap() -> None:
    """The cap can be lowered per call, and an int cap still gives a float."""
    assert parse_retry_after("600", now=NOW, cap=30.0) == 30.0
    wait = parse_retry_after("600", now=NOW, cap=30)
    assert type(wait) is float
    assert wait == 30.0


@FAST
@given(ahead=st.integers(min_value=-(10**6), max_value=10**6))
def test_http_date_gives_delta_from_now(ahead: int) -> None:
    """An HTTP date `ahead` seconds from now gives max(0, ahead), capped."""
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=ahead)
    header = format_datetime(when, usegmt=True)
    assert parse_retry_after(header, now=NOW) == pytest.approx(min(6 * 3600, max(0, ahead)))


@FAST
@given(value=st.text(max_size=60), now=st.floats(min_value=0, max_value=4e9))
def test_parse_retry_after_never_raises(value: str, now: float) -> None:
    """Any header text gives None or a float delay in [0, cap]."""
    wait = parse_retry_after(value, now=now)
    assert wait is None or (type(wait) is float and 0 <= wait <= 6 * 3600)
