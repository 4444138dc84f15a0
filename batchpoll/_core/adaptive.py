"""The effective request rate under throttling: AIMD, as TCP does with its window (pure).

A 429 without ``Retry-After`` says "slower" but not how much: halve the rate (multiplicative
decrease), then win it back linearly while answers are clean (additive increase), never above
the configured ``--rate``. Time is passed in; nothing here sleeps or reads a clock.
"""

from __future__ import annotations


class Aimd:
    """Effective rate in requests/second, between ``floor`` and ``ceiling``.

    One decrease per ``cooldown`` seconds at most: the requests already in flight when the
    first 429 arrives tend to be throttled too, and they describe one overload, not several.
    """

    __slots__ = (
        "_cooldown",
        "_factor",
        "_last_cut",
        "_last_step",
        "ceiling",
        "floor",
        "lowest",
        "rate",
        "step",
    )

    def __init__(
        self,
        ceiling: float,
        *,
        factor: float = 0.5,
        recover_s: float = 10.0,
        floor_share: float = 1 / 64,
        cooldown: float = 1.0,
    ) -> None:
        """*recover_s*: seconds of clean answers to climb from ``floor`` back to ``ceiling``."""
        if not 0 < factor < 1:
            raise ValueError("factor must be between 0 and 1")
        self.ceiling = ceiling
        self.rate = ceiling
        self.lowest = ceiling
        self.floor = ceiling * floor_share
        self.step = (ceiling - self.floor) / recover_s  # requests/second gained per second
        self._factor = factor
        self._cooldown = cooldown
        self._last_cut = -float("inf")
        self._last_step: float | None = None

    def throttled(self, now: float) -> bool:
        """A 429 without Retry-After at *now* (seconds); True when the rate was lowered."""
        self._last_step = now
        if now - self._last_cut < self._cooldown:
            return False
        self._last_cut = now
        self.rate = max(self.floor, self.rate * self._factor)
        self.lowest = min(self.lowest, self.rate)
        return True

    def clean(self, now: float) -> bool:
        """A clean answer at *now*; True when the rate went up."""
        last, self._last_step = self._last_step, now
        if self.rate >= self.ceiling or last is None:
            return False
        self.rate = min(self.ceiling, self.rate + self.step * (now - last))
        return True

    def __repr__(self) -> str:
        return f"Aimd(rate={self.rate:.3g}, ceiling={self.ceiling:.3g}, lowest={self.lowest:.3g})"
