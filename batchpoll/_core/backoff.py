"""When to poll next (pure): growing poll intervals, retry backoff, and ``Retry-After``.

Every delay is in seconds. Randomness comes from the ``random.Random`` passed in, so a seeded
generator makes a run repeatable; time comes in as ``now``, never from a clock read here.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

# A number as float() reads it, with ASCII digits only (float() takes any script's) and no
# "_" separators: delay-seconds, the fraction some servers add, an exponent, inf, nan.
_NUMBER: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)",
    re.ASCII | re.IGNORECASE,
)


def grow(base: float | None, *, first: float, factor: float, cap: float) -> float:
    """The next un-jittered poll interval in seconds: ``first`` when ``base`` is None, else
    ``base * factor``; never above ``cap``.

    Growing from the previous interval and clamping (rather than ``first * factor ** n``) cannot
    overflow however many polls an id takes (stamina #137). With ``factor >= 1`` and
    ``first <= cap`` the sequence is nondecreasing.
    """
    return min(cap, first if base is None else base * factor)


def jittered(base: float, *, jitter: float, rng: random.Random) -> float:
    """``base`` seconds scaled down by up to ``jitter`` (0..1), uniformly: in
    ``[base * (1 - jitter), base]``.

    Only ever shortening keeps the result under whatever cap ``base`` respects, while spreading
    ids that started together so their polls stop arriving in lockstep.
    """
    return base * (1.0 - jitter * rng.random())


def retry_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (>= 1): uniform in
    ``[0, min(cap, base * 2 ** (failures - 1))]``.

    "Full jitter" exponential backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"):
    spreading retries over the whole range de-synchronises clients better than adding a little
    noise to a fixed delay.
    """
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    # 2.0 ** 1024 overflows a float; 1023 doublings already pass the cap for any base above
    # cap * 2**-1023, and an infinite product is clamped by min() like any other.
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 1023))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str, *, now: float, cap: float = 6 * 3600.0) -> float | None:
    """A ``Retry-After`` header value -> seconds to wait from ``now`` (epoch seconds), or None.

    Accepts delay-seconds (RFC 9110 section 10.2.3), any other non-negative number in ASCII
    (``1.5``, ``1e3``, ``+5``: some servers send one), or an HTTP date (a date without a zone
    is taken as UTC; a past date gives 0). A server that sends a Retry-After asks for a pause,
    so a number too large for a float (``1e400``, ``inf``) is the cap, not garbage. A negative
    number, NaN, non-ASCII digits or anything else gives None. The result is always a float
    in ``[0, cap]``, so a bogus far-future value cannot stall a run for days, and however large
    the number or far the date, it is still a wait to honour.
    """
    cap = float(cap)
    text = value.strip()
    if _NUMBER.fullmatch(text):
        # float() of such text never raises: too large is inf (int() would refuse 4300+
        # digits), and inf is clamped like any other excess.
        seconds = float(text)
        if math.isnan(seconds) or seconds < 0:
            return None
        return min(cap, max(0.0, seconds))  # max: "-0" is 0.0, not -0.0
    return _seconds_until_date(text, now=now, cap=cap)


def _seconds_until_date(text: str, *, now: float, cap: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delta = when.timestamp() - now
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(delta):
        return None
    return min(cap, max(0.0, delta))
