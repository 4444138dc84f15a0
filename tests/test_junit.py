"""JUnit XML: one test case per record, failures and skips as CI servers expect them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import orjson
import pytest

from batchpoll._views.junit import SKIPPED_STATUSES, write_junit
from batchpoll.errors import InputFileError
from batchpoll.records import ALL_STATUSES, DEFAULT_FAIL_ON, Record


def as_dict(record: Record) -> dict[str, Any]:
    return dict(orjson.loads(record.to_json_line()))


def every_status() -> list[dict[str, Any]]:
    """Two records of each status, with modes, times and errors."""
    return [
        as_dict(
            Record(
                progress_id=f"{status}-{i}",
                status=status,
                mode=None if status == "invalid_input" else "improve",
                elapsed_s=None if status == "invalid_input" else 1.25 * (i + 1),
                error=None if status == "completed" else f"{status} because\nline two",
            )
        )
        for status in sorted(ALL_STATUSES)
        for i in range(2)
    ]


def parse(path: Path) -> tuple[ET.Element, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.tag == "testsuite"
    return root, suite


def cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {case.attrib["name"]: case for case in suite.iter("testcase")}


@pytest.mark.parametrize(
    "fail_on",
    [DEFAULT_FAIL_ON, frozenset(), frozenset({"cancelled", "completed"})],
    ids=["default", "none", "cancelled-and-completed"],
)
def test_counts_match_the_records(tmp_path: Path, fail_on: frozenset[str]) -> None:
    """tests, failures and skipped count the records, those in fail_on, and the skipped rest."""
    records = every_status()
    path = tmp_path / "junit.xml"
    write_junit(str(path), records, fail_on)
    root, suite = parse(path)
    failing = sum(r["status"] in fail_on for r in records)
    skipped = sum(r["status"] in SKIPPED_STATUSES - fail_on for r in records)
    for element in (root, suite):
        assert element.attrib["tests"] == str(len(records))
        assert element.attrib["failures"] == str(failing)
        assert element.attrib["skipped"] == str(skipped)
        assert element.attrib["errors"] == "0"
    assert len(suite.findall("testcase/failure")) == failing
    assert len(suite.findall("testcase/skipped")) == skipped


def test_each_record_is_a_case_named_by_id_and_classed_by_mode(tmp_path: Path) -> None:
    """A case's name is the progress id, its classname batchpoll.<mode>, its time elapsed_s."""
    path = tmp_path / "junit.xml"
    write_junit(str(path), every_status(), DEFAULT_FAIL_ON, suite="nightly")
    _, suite = parse(path)
    assert suite.attrib["name"] == "nightly"
    got = cases(suite)
    assert got["completed-1"].attrib == {
        "classname": "batchpoll.improve",
        "name": "completed-1",
        "time": "2.500",
    }
    assert got["invalid_input-0"].attrib["classname"] == "batchpoll.unknown"
    assert got["invalid_input-0"].attrib["time"] == "0.000"
    assert float(suite.attrib["time"]) == pytest.approx(
        sum(float(c.attrib["time"]) for c in got.values())
    )


def test_passing_records_have_no_child(tmp_path: Path) -> None:
    """A completed record outside fail_on is a bare test case: it passed."""
    path = tmp_path / "junit.xml"
    write_junit(str(path), every_status(), DEFAULT_FAIL_ON)
    _, suite = parse(path)
    assert list(cases(suite)["completed-0"]) == []


def test_failure_holds_status_and_the_full_error(tmp_path: Path) -> None:
    """A failure's message is status and first error line; its text is status and whole error."""
    error = "agent crashed\n  Traceback line 1\n  Traceback line 2"
    path = tmp_path / "junit.xml"
    write_junit(
        str(path), [{"progress_id": "a", "status": "failed", "error": error}], DEFAULT_FAIL_ON
    )
    _, suite = parse(path)
    failure = cases(suite)["a"].find("failure")
    assert failure is not None
    assert failure.attrib == {"message": "failed: agent crashed", "type": "failed"}
    assert failure.text == f"failed\n{error}"


def test_skipped_carries_the_same_body(tmp_path: Path) -> None:
    """A needs_clarification record outside fail_on is skipped, with the status and error."""
    path = tmp_path / "junit.xml"
    record = {"progress_id": "q", "status": "needs_clarification", "error": "which agent?"}
    write_junit(str(path), [record], DEFAULT_FAIL_ON)
    _, suite = parse(path)
    skipped = cases(suite)["q"].find("skipped")
    assert skipped is not None
    assert skipped.attrib == {"message": "needs_clarification: which agent?"}
    assert skipped.text == "needs_clarification\nwhich agent?"


@pytest.mark.parametrize(
    ("pid", "error"),
    [
        ("""a<b>&c"d'e""", """<error code="1">&amp; 'quoted'</error>"""),
        ("é-日本-🎉", "ошибка: 失败 ✗"),
        ("tab\tid", "line one\r\nline two\n\n"),
    ],
    ids=["markup", "non-ascii", "whitespace"],
)
def test_special_characters_round_trip(tmp_path: Path, pid: str, error: str) -> None:
    """Markup characters and non-ASCII in ids and errors come back exactly from the XML."""
    path = tmp_path / "junit.xml"
    write_junit(
        str(path), [{"progress_id": pid, "status": "error", "error": error}], DEFAULT_FAIL_ON
    )
    _, suite = parse(path)
    (case,) = suite
    failure = case.find("failure")
    assert failure is not None
    assert case.attrib["name"] == pid
    assert failure.text == f"error\n{error}".replace("\r\n", "\n")  # XML normalises line ends
    assert failure.attrib["message"] == f"error: {error.strip().splitlines()[0]}"


def test_characters_xml_cannot_hold_are_replaced(tmp_path: Path) -> None:
    """Control characters in an error become U+FFFD, so the file still parses."""
    path = tmp_path / "junit.xml"
    record = {"progress_id": "c", "status": "failed", "error": "bell\x07 esc\x1b[31m nul\x00"}
    write_junit(str(path), [record], DEFAULT_FAIL_ON)
    _, suite = parse(path)
    failure = cases(suite)["c"].find("failure")
    assert failure is not None
    assert failure.text == "failed\nbell\ufffd esc\ufffd[31m nul\ufffd"


def test_written_atomically_over_an_old_report(tmp_path: Path) -> None:
    """An existing report is replaced whole and no temporary file is left behind."""
    path = tmp_path / "junit.xml"
    path.write_text("old")
    write_junit(str(path), [{"progress_id": "a", "status": "completed"}], DEFAULT_FAIL_ON)
    _, suite = parse(path)
    assert suite.attrib["tests"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]


def test_unwritable_path_is_an_input_file_error(tmp_path: Path) -> None:
    """A report path in a missing directory raises InputFileError naming it."""
    path = tmp_path / "no-such-dir" / "junit.xml"
    with pytest.raises(InputFileError, match="cannot write JUnit report"):
        write_junit(str(path), [], DEFAULT_FAIL_ON)


def test_empty_run_is_an_empty_suite(tmp_path: Path) -> None:
    """No records give a valid suite with zero tests."""
    path = tmp_path / "junit.xml"
    write_junit(str(path), [], DEFAULT_FAIL_ON)
    root, suite = parse(path)
    assert (root.attrib["tests"], suite.attrib["tests"], list(suite)) == ("0", "0", [])
