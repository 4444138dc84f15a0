"""How the fake API behaves: one frozen value checked once, read by the fates, server and CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from .._core.loopback import is_loopback_host

# A Retry-After form: delta-seconds (fractions allowed, as some servers send), "date", "none".
RETRY_FORM: Final = re.compile(r"[0-9]+(\.[0-9]+)?|date|none")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """How the fake API behaves; times in seconds, rates in requests per second.

    Fault rates are fractions of requests (each in 0..1, together at most 1); all default to 0.
    """

    seed: int = 0
    api_key: str | None = None  # when set, any other X-CEKURA-API-KEY gets 401
    unauthorized_after: int | None = None  # every request after this many gets 401 (key revoked)
    min_polls: int = 1  # k per id is drawn from [min_polls, max_polls]
    max_polls: int = 4
    pending: bool = False  # every id that would end stays non-terminal forever
    latency: float = 0.0  # wait before each answer; the request counts as in flight meanwhile
    rate_limit: float | None = None  # GCRA policing all requests together; None = unlimited
    rate_burst: int = 1  # requests admitted back-to-back at rate_limit
    retry_after: str | None = "1"  # Retry-After form of each 429; None = no header
    # Forms each 429 picks its Retry-After from at random; None = just (retry_after,). A form is
    # delta-seconds ("1", "0.5"), "date" (an HTTP-date 1 s ahead, rounded up to a whole
    # second) or "none" (no header).
    retry_after_forms: tuple[str, ...] | None = None
    error_rate: float = 0.0  # 500/502/503
    drop_rate: float = 0.0  # connection aborted, no response
    truncate_rate: float = 0.0  # 200 cut short of its Content-Length, then closed
    slow_rate: float = 0.0  # 200 that stalls slow_body_s halfway through its body
    slow_body_s: float = 5.0
    garbage_rate: float = 0.0  # 200 with an unusable body
    throttle_rate: float = 0.0  # 429 regardless of rate_limit
    redirect_url: str | None = None  # loopback http base URL that redirect- ids are sent to
    path: str = "/test_framework/v1/scenarios/scenario-agent-progress/"

    def __post_init__(self) -> None:
        if not 1 <= self.min_polls <= self.max_polls:
            raise ValueError("need 1 <= min_polls <= max_polls")
        if self.latency < 0 or self.slow_body_s < 0 or self.rate_burst < 1:
            raise ValueError("need latency >= 0, slow_body_s >= 0 and rate_burst >= 1")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 (or None for no limit)")
        rates = fault_rates(self)
        for kind, rate in rates:
            if not 0 <= rate <= 1:
                raise ValueError(f"need 0 <= {kind}_rate <= 1, not {rate!r}")
        # The slack forgives float sums such as 6 * (1 / 6).
        if sum(rate for _, rate in rates) > 1 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        forms = retry_forms(self)
        if not forms or not all(RETRY_FORM.fullmatch(form) for form in forms):
            raise ValueError(
                f"Retry-After forms are delta-seconds, 'date' or 'none'; not {list(forms)!r}"
            )
        if self.unauthorized_after is not None and self.unauthorized_after < 0:
            raise ValueError("unauthorized_after must be >= 0 (or None)")
        if self.redirect_url is not None and not _loopback_http(self.redirect_url):
            raise ValueError(
                f"redirect_url must be an http:// URL on loopback, not {self.redirect_url!r}"
            )


def fault_rates(settings: SimSettings) -> tuple[tuple[str, float], ...]:
    """``(kind, rate)`` for every fault, in the order they cut the one draw per request.

    The order fixes which slice of the draw each kind owns, so one seed and one set of rates
    give the same faults on every run.
    """
    return (
        ("error", settings.error_rate),
        ("drop", settings.drop_rate),
        ("truncate", settings.truncate_rate),
        ("slow", settings.slow_rate),
        ("garbage", settings.garbage_rate),
        ("throttle", settings.throttle_rate),
    )


def retry_forms(settings: SimSettings) -> tuple[str, ...]:
    """The Retry-After forms a 429 picks from (``"none"`` for no header)."""
    if settings.retry_after_forms is not None:
        return settings.retry_after_forms
    return ("none",) if settings.retry_after is None else (settings.retry_after,)


def _loopback_http(url: str) -> bool:
    """Whether *url* is a plain ``http://`` URL on a loopback host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a port that is not a number in range
    except ValueError:
        return False
    loopback = is_loopback_host(parts.hostname or "")
    return loopback and parts.scheme == "http" and not parts.query and not parts.fragment


DEFAULT_SETTINGS: Final = SimSettings()
