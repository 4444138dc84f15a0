"""``batchpoll report``: OUTPUT read back, counted as a run counts, and shown as a table."""

from __future__ import annotations

import gzip
import io
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchpoll._core.stats import DEFAULT_FAIL_ON, RunStats
from batchpoll._io.outfile.read import Reading, read_records
from batchpoll._views.report import render, report_main, summarize
from batchpoll.errors import InputFileError
from batchpoll.records import Record


def sample() -> list[Record]:
    """Thirty records of every kind, with long ids and multi-line errors among them."""
    kinds = ["completed", "completed", "failed", "error", "cancelled", "timed_out"]
    records = []
    for i in range(30):
        status = kinds[i % len(kinds)]
        records.append(
            Record(
                progress_id=f"job-{i}" + ("-" + "x" * 120 if i == 2 else ""),
                status=status,
                mode="improve" if i % 3 else "clarify",
                elapsed_s=None if status == "timed_out" and i > 20 else i * 0.5,
                error=None if status == "completed" else f"{status} #{i}\n" + "detail " * 30,
                polls=i,
            )
        )
    return records


def write_lines(path: Path, records: list[Record], tail: bytes = b"") -> Path:
    data = b"".join(r.to_json_line() for r in records) + tail
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"], ids=["plain", "gzip"])
def test_read_records_streams_every_record(tmp_path: Path, name: str) -> None:
    """Every record of a plain or gzipped OUTPUT comes back, in file order."""
    records = sample()
    path = write_lines(tmp_path / name, records)
    got = list(read_records(str(path)))
    assert [r["progress_id"] for r in got] == [r.progress_id for r in records]
    assert got[0] == orjson.loads(records[0].to_json_line())


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"], ids=["plain", "gzip"])
def test_torn_last_line_is_skipped(tmp_path: Path, name: str) -> None:
    """A last line cut short by a killed run is left out; the whole lines before it count."""
    records = sample()[:3]
    torn = Record(progress_id="torn", status="completed").to_json_line()[:25]
    path = write_lines(tmp_path / name, records, tail=torn)
    assert [r["progress_id"] for r in read_records(str(path))] == [
        "job-0",
        "job-1",
        records[2].progress_id,
    ]


def test_a_torn_gzip_member_is_left_out_as_resume_cuts_it(tmp_path: Path) -> None:
    """A .gz whose last member is cut short yields the whole members' records, no error."""
    path = tmp_path / "out.jsonl.gz"
    records = sample()
    whole = gzip.compress(b"".join(r.to_json_line() for r in records[:10]))
    torn = gzip.compress(b"".join(r.to_json_line() for r in records[10:]))
    path.write_bytes(whole + torn[: len(torn) - 20])
    reading = Reading()
    got = list(read_records(str(path), reading))
    assert [r["progress_id"] for r in got] == [r.progress_id for r in records[:10]]
    assert reading.torn == len(torn) - 20


def test_lines_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    """Blank lines, non-JSON, non-objects and objects without string id and status are skipped."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                b"",
                b"not json",
                b"[1, 2]",
                b'"a string"',
                b'{"progress_id": 7, "status": "completed"}',
                b'{"progress_id": "no-status"}',
                b'{"progress_id": "ok", "status": "completed"}',
                b"\xff\xfe",
            ]
        )
        + b"\n"
    )
    assert [r["progress_id"] for r in read_records(str(path))] == ["ok"]


def unreadable(tmp_path: Path, kind: str) -> Path:
    if kind == "not-gzip":
        (tmp_path / "plain.gz").write_bytes(b"not gzip\n")
        return tmp_path / "plain.gz"
    return tmp_path / "missing.jsonl" if kind == "missing" else tmp_path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "No such file"),
        ("directory", "Is a directory"),
        ("not-gzip", "is not gzip"),
    ],
    ids=["missing", "directory", "not-gzip"],
)
def test_unreadable_file_is_an_input_file_error(tmp_path: Path, kind: str, message: str) -> None:
    """A missing file, a directory or a .gz that is not gzip raise InputFileError naming it."""
    path = unreadable(tmp_path, kind)
    with pytest.raises(InputFileError, match=message) as caught:
        list(read_records(str(path)))
    assert str(path) in str(caught.value)


def test_summarize_equals_the_run_tally_for_the_same_records(tmp_path: Path) -> None:
    """A report of OUTPUT has the very facts the run counted while writing it."""
    records = sample()
    stats = RunStats()
    for rec in records:
        stats.add(rec)
    path = write_lines(tmp_path / "out.jsonl", records)
    assert summarize(read_records(str(path)), DEFAULT_FAIL_ON) == stats.tally.facts()


def test_summarize_keeps_the_first_record_of_a_repeated_id() -> None:
    """An id seen twice counts once, with its first record's status, as --resume keeps it."""
    rows = [
        {"progress_id": "a", "status": "completed"},
        {"progress_id": "b", "status": "completed"},
        {"progress_id": "a", "status": "error", "error": "HTTP 503"},
    ]
    facts = summarize(rows, DEFAULT_FAIL_ON)
    assert (facts["records"], facts["by_status"], facts["failed"]) == (2, {"completed": 2}, [])


def test_summarize_reads_odd_values_leniently() -> None:
    """A non-number elapsed_s is no timing, and a non-string error is shown as text."""
    facts = summarize(
        [{"progress_id": "a", "status": "failed", "elapsed_s": "3", "error": {"code": 1}}],
        DEFAULT_FAIL_ON,
    )
    assert facts["time_to_end_s"]["max"] is None
    assert facts["failed"] == [{"progress_id": "a", "status": "failed", "error": "{'code': 1}"}]


def run_summary() -> dict[str, Any]:
    stats = RunStats()
    for rec in sample():
        stats.add(rec)
    stats.requests, stats.retries, stats.throttled, stats.paused_s = 412, 7, 2, 30.0
    stats.retry_causes.update({"5xx": 4, "timeout": 2, "connection": 1})
    summary = stats.summary()
    summary["exit_code"] = 1
    return summary


def test_render_shows_counts_sorted_and_the_run_facts() -> None:
    """The table lists statuses most frequent first with counts, then requests, retries, 429s."""
    text = render(run_summary())
    table = text.splitlines()[:6]
    assert table[0].split() == ["status", "ids", "share"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["completed", "10"],
        ["cancelled", "5"],
        ["error", "5"],
        ["failed", "5"],
        ["timed_out", "5"],
    ]
    assert text.splitlines()[6].split() == ["total", "30"]
    assert "retries       7 (5xx 4, timeout 2, connection 1)" in text
    assert "429s          2, paused 30 s" in text
    assert "requests      412" in text
    assert "exit code     1" in text
    assert "first failed ids (10 of 15)" in text


def test_render_leaves_out_facts_the_summary_lacks() -> None:
    """A report's summary has no requests or elapsed, so neither line appears."""
    text = render(summarize((orjson.loads(r.to_json_line()) for r in sample()), DEFAULT_FAIL_ON))
    assert "requests" not in text
    assert "elapsed" not in text
    assert "time to end" in text


@pytest.mark.parametrize("width", [80, 40], ids=["80-columns", "40-columns"])
def test_render_fits_the_width(width: int) -> None:
    """No line is wider than width, even with a 120-character id and long errors."""
    summary = run_summary()
    summary["failed"].append(
        {"progress_id": "日本語-" * 30, "status": "needs_agent_clarification", "error": "é " * 200}
    )
    text = render(summary, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "\x1b" not in text  # plain text: nothing to strip for NO_COLOR or a log


def test_render_measures_wide_characters_as_two_columns() -> None:
    """An id of wide (CJK) characters is cut to its column in terminal cells, not characters."""
    summary = {"failed": [{"progress_id": "日" * 100, "status": "failed", "error": "x"}]}
    line = render(summary, width=80).splitlines()[-1]
    cells = sum(2 if unicodedata.east_asian_width(ch) == "W" else 1 for ch in line)
    assert cells <= 80
    assert "  " + "日" * 11 + "...   failed  x" in line  # 11 wide characters and ... fill 25 of 26


def report(
    path: Path, *, as_json: bool = False, fail_on: frozenset[str] = DEFAULT_FAIL_ON
) -> tuple[int, str]:
    out = io.StringIO()
    code = report_main(str(path), as_json=as_json, fail_on=fail_on, out=out)
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("statuses", "fail_on", "code"),
    [
        (["completed", "needs_clarification"], DEFAULT_FAIL_ON, 0),
        (["completed", "failed"], DEFAULT_FAIL_ON, 1),
        (["completed", "failed"], frozenset(), 0),
        (["completed", "cancelled"], frozenset({"cancelled"}), 1),
    ],
    ids=["all-pass", "one-failed", "fail-on-none", "fail-on-cancelled"],
)
def test_report_exit_code_follows_fail_on(
    tmp_path: Path, statuses: list[str], fail_on: frozenset[str], code: int
) -> None:
    """report exits 1 exactly when a record's status is in --fail-on, as a run would."""
    path = write_lines(
        tmp_path / "out.jsonl",
        [Record(progress_id=f"id-{i}", status=s) for i, s in enumerate(statuses)],
    )
    assert report(path, fail_on=fail_on)[0] == code


def test_report_text_lists_every_failed_id(tmp_path: Path) -> None:
    """The text report ends with every failed id, tab-separated, errors on one line."""
    records = [
        Record(progress_id=f"bad-{i}", status="error", error=f"HTTP 503\nattempt {i}")
        for i in range(15)
    ]
    code, text = report(write_lines(tmp_path / "out.jsonl", records))
    assert code == 1
    tail = text.splitlines()[-15:]
    assert tail == [f"bad-{i}\terror\tHTTP 503 attempt {i}" for i in range(15)]
    assert "first failed ids" not in text  # the full list replaces the first ten


def test_report_json_holds_the_summary_and_every_failed_id(tmp_path: Path) -> None:
    """--json prints the tally's facts, the exit code and all failed ids, not only ten."""
    records = sample()
    code, text = report(write_lines(tmp_path / "out.jsonl.gz", records), as_json=True)
    data = orjson.loads(text)
    assert code == data["exit_code"] == 1
    assert (
        data["by_status"]
        == summarize((orjson.loads(r.to_json_line()) for r in records), DEFAULT_FAIL_ON)[
            "by_status"
        ]
    )
    failing = [r.progress_id for r in records if r.status in DEFAULT_FAIL_ON]
    assert [f["progress_id"] for f in data["failed"]] == failing
    assert data["failed_count"] == len(failing) == 15


def test_report_of_a_missing_file_raises_input_file_error(tmp_path: Path) -> None:
    """report_main lets InputFileError out, for the CLI to turn into exit 2."""
    with pytest.raises(InputFileError, match=r"missing\.jsonl"):
        report(tmp_path / "missing.jsonl")
