"""Counting records and retries: the Tally behind the run's summary and ``batchpoll report``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll._core.stats import (
    CAUSES,
    DEFAULT_FAIL_ON,
    FIRST_FAILED,
    RunStats,
    Tally,
    cause_of,
    exit_code,
    percentile,
)
from batchpoll.records import Record


def test_facts_of_an_empty_tally_have_no_timings() -> None:
    """With nothing counted, every count is 0 and the timings are None."""
    assert Tally().facts() == {
        "records": 0,
        "by_status": {},
        "by_mode": {},
        "time_to_end_s": {"p50": None, "p95": None, "max": None},
        "failed": [],
        "failed_count": 0,
    }


def test_facts_count_statuses_and_modes_sorted_by_name() -> None:
    """by_status and by_mode count each record once, keys sorted; a missing mode is unknown."""
    tally = Tally()
    for pid, status, mode in [
        ("a", "failed", "improve"),
        ("b", "completed", "clarify"),
        ("c", "completed", None),
    ]:
        tally.add(pid, status, 1.0, None, mode)
    facts = tally.facts()
    assert facts["records"] == 3
    assert list(facts["by_status"].items()) == [("completed", 2), ("failed", 1)]
    assert facts["by_mode"] == {"clarify": 1, "improve": 1, "unknown": 1}


def test_add_says_whether_the_status_is_in_fail_on() -> None:
    """add returns True exactly for statuses in the tally's fail_on."""
    tally = Tally(frozenset({"cancelled"}))
    assert tally.add("a", "cancelled", None, None, None) is True
    assert tally.add("b", "failed", None, None, None) is False
    assert tally.facts()["failed_count"] == 1


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([15, 20, 35, 40, 50], 5, 15),
        ([15, 20, 35, 40, 50], 30, 20),
        ([15, 20, 35, 40, 50], 40, 20),
        ([15, 20, 35, 40, 50], 50, 35),
        ([15, 20, 35, 40, 50], 100, 50),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 25, 7),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 50, 8),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 75, 15),
        ([3, 6, 7, 8, 8, 10, 13, 15, 16, 20], 95, 20),
        ([7], 50, 7),
        ([], 50, None),
    ],
    ids=[
        "5-p5",
        "5-p30",
        "5-p40",
        "5-p50",
        "5-p100",
        "10-p25",
        "10-p50",
        "10-p75",
        "10-p95",
        "one",
        "none",
    ],
)
def test_percentile_is_nearest_rank(values: list[float], pct: int, expected: float | None) -> None:
    """The p-th percentile is the value at rank ceil(p/100 * n) of the sorted values."""
    assert percentile(values, pct) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.integers(1, 100))
def test_percentile_is_a_value_with_pct_at_or_below(values: list[float], pct: int) -> None:
    """The percentile is one of the values, with at least pct% of them at or below it."""
    ordered = sorted(values)
    p = percentile(ordered, pct)
    assert p in ordered
    assert sum(v <= p for v in ordered) * 100 >= pct * len(ordered)


def test_time_to_end_uses_nearest_rank_on_terminal_statuses_only() -> None:
    """p50/p95/max come from API-terminal records; timed_out and not_found times are left out."""
    tally = Tally()
    for i in range(1, 21):
        tally.add(f"job-{i}", "completed" if i % 2 else "failed", float(i), None, "improve")
    tally.add("slow", "timed_out", 3600.0, None, None)
    tally.add("gone", "not_found", 0.0, None, None)
    tally.add("never", "invalid_input", None, "bad id", None)
    assert tally.facts()["time_to_end_s"] == {"p50": 10.0, "p95": 19.0, "max": 20.0}


def test_failed_lists_the_first_ten_in_order_and_counts_all() -> None:
    """failed names the first FIRST_FAILED failing records as seen; failed_count counts all."""
    tally = Tally()
    for i in range(25):
        tally.add(f"ok-{i}", "completed", 1.0, None, None)
        tally.add(f"bad-{i}", "error", 2.0, f"HTTP 503 #{i}", None)
    facts = tally.facts()
    assert FIRST_FAILED == 10
    assert facts["failed"] == [
        {"progress_id": f"bad-{i}", "status": "error", "error": f"HTTP 503 #{i}"} for i in range(10)
    ]
    assert facts["failed_count"] == 25


def test_prior_statuses_count_without_timings_or_ids() -> None:
    """add_prior counts resumed records by status (and as failures) but adds no timing or id."""
    tally = Tally()
    tally.add_prior({"completed": 4, "failed": 2})
    facts = tally.facts()
    assert (facts["records"], facts["by_status"]) == (6, {"completed": 4, "failed": 2})
    assert (facts["failed"], facts["failed_count"]) == ([], 2)
    assert facts["time_to_end_s"]["max"] is None


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("HTTP 500", "5xx"),
        ("HTTP 503", "5xx"),
        ("HTTP 599", "5xx"),
        ("HTTP 429", "429"),
        ("HTTP 418", "other"),
        ("timeout after 5s", "timeout"),
        ("timeout after 0.5s", "timeout"),
        ("ServerTimeoutError: Timeout on reading data from socket", "timeout"),
        ("ConnectionTimeoutError: Connection timeout to host", "timeout"),
        ("TimeoutError: [Errno 110] Connection timed out", "timeout"),
        ("ServerDisconnectedError: Server disconnected", "connection"),
        ("ServerDisconnectedError", "connection"),
        ("ClientConnectorError: Cannot connect to host 127.0.0.1:1", "connection"),
        ("ClientConnectorError Cannot connect to host", "connection"),
        ("ClientOSError: [Errno 104] Connection reset by peer", "connection"),
        ("ConnectionResetError: Connection reset by peer", "connection"),
        ("OSError: Network is unreachable", "connection"),
        ("ClientPayloadError: Response payload is not completed", "body"),
        ("unreadable body: not JSON", "body"),
        ("unreadable body: larger than 10485760 bytes", "body"),
        ("unreadable body: content type text/html", "body"),
        ("SomethingNew: who knows", "other"),
        ("", "other"),
    ],
    ids=lambda value: value if isinstance(value, str) and value else "empty",
)
def test_cause_of_sorts_transient_reasons(reason: str, cause: str) -> None:
    """Every Transient reason the client makes maps to its cause; the unknown to other."""
    assert cause_of(reason) == cause
    assert cause in CAUSES


def record(pid: str, status: str, elapsed: float | None = 1.0, error: str | None = None) -> Record:
    return Record(progress_id=pid, status=status, elapsed_s=elapsed, error=error, mode="improve")


def test_run_stats_counts_through_its_tally() -> None:
    """RunStats.add feeds the tally; done and by_status are read from it."""
    stats = RunStats()
    assert stats.fail_on == DEFAULT_FAIL_ON
    assert stats.add(record("a", "completed")) is False
    assert stats.add(record("b", "failed", error="boom")) is True
    assert (stats.done, dict(stats.by_status)) == (2, {"completed": 1, "failed": 1})
    assert stats.tally.facts()["failed"] == [
        {"progress_id": "b", "status": "failed", "error": "boom"}
    ]


def test_run_stats_fail_on_decides_what_add_reports() -> None:
    """A RunStats made with fail_on={cancelled} reports cancelled, not failed."""
    stats = RunStats(fail_on=frozenset({"cancelled"}))
    assert stats.add(record("a", "failed")) is False
    assert stats.add(record("b", "cancelled")) is True


def test_resumed_records_count_in_by_status_but_not_done() -> None:
    """add_prior counts kept records into by_status and the exit code, not into done."""
    stats = RunStats()
    stats.add_prior({"completed": 3, "error": 1})
    stats.add(record("new", "completed"))
    assert (stats.done, stats.resumed) == (1, 4)
    assert dict(stats.by_status) == {"completed": 4, "error": 1}
    assert exit_code(stats.by_status, stats.fail_on) == 1


def test_summary_keeps_the_old_keys_and_adds_the_tally_facts() -> None:
    """summary() holds the run's counters, the tally's facts and retries by cause."""
    stats = RunStats()
    stats.add(record("a", "completed", elapsed=2.0))
    stats.add(record("b", "error", error="HTTP 503"))
    stats.retries = 3
    stats.retry_causes.update(["5xx", "5xx", "timeout"])
    summary = stats.summary()
    assert set(summary) == {
        "ids",
        "done",
        "by_status",
        "by_mode",
        "time_to_end_s",
        "failed",
        "failed_count",
        "requests",
        "retries",
        "retries_by_cause",
        "throttled",
        "paused_s",
        "lowest_rate",
        "elapsed_s",
        "request_rate",
        "stopped_by_signal",
    }
    assert summary["by_status"] == {"completed": 1, "error": 1}
    assert summary["time_to_end_s"] == {"p50": 2.0, "p95": 2.0, "max": 2.0}
    assert summary["failed_count"] == 1
    assert summary["retries_by_cause"] == {"5xx": 2, "timeout": 1}


@pytest.mark.parametrize(
    ("by_status", "fail_on", "code"),
    [
        ({"completed": 3}, DEFAULT_FAIL_ON, 0),
        ({"completed": 3, "failed": 1}, DEFAULT_FAIL_ON, 1),
        ({"failed": 0}, DEFAULT_FAIL_ON, 0),
        ({"failed": 2}, frozenset(), 0),
    ],
    ids=["all-pass", "one-failed", "zero-count", "fail-on-none"],
)
def test_exit_code_is_1_only_for_a_counted_fail_on_status(
    by_status: dict[str, int], fail_on: frozenset[str], code: int
) -> None:
    """The exit code is 1 when some status in fail_on has a non-zero count."""
    assert exit_code(by_status, fail_on) == code
