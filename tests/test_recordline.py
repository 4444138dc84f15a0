"""recordline: which lines are batchpoll records, and which torn tails a killed run can leave."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpoll._core.recordline import (
    RECORD_START,
    could_be_torn,
    parse_record,
    record_fields,
    record_of,
)
from batchpoll.records import ALL_STATUSES, Record, record_key


def rec(pid: str, status: str = "completed") -> bytes:
    return Record(progress_id=pid, status=status).to_json_line()


def test_every_record_line_begins_the_same_way() -> None:
    """A written record starts with RECORD_START, whatever its id and status."""
    assert all(rec("x", s).startswith(RECORD_START) for s in ALL_STATUSES)


@pytest.mark.parametrize(
    ("obj", "fields"),
    [
        ({"progress_id": "a", "status": "completed"}, ("a", "completed")),
        ({"progress_id": "a", "status": "made_up"}, ("a", "made_up")),
        ({"progress_id": 1, "status": "completed"}, None),
        ({"progress_id": "a", "status": None}, None),
        ({"status": "completed"}, None),
        (["progress_id", "status"], None),
        ("a", None),
    ],
    ids=["record", "any-status", "int-id", "null-status", "no-id", "list", "str"],
)
def test_record_fields_is_the_shape_only(obj: object, fields: tuple[str, str] | None) -> None:
    """A mapping with a string id and a string status has fields; anything else has none."""
    assert record_fields(obj) == fields


@pytest.mark.parametrize(
    ("line", "ours"),
    [
        (rec("a"), True),
        (rec("a", "timed_out"), True),
        (b'{"progress_id":"a","status":"made_up"}\n', False),
        (b'{"progress_id":"a"}\n', False),
        (b'["progress_id","completed"]\n', False),
        (b"a\n", False),
        (b"{not json\n", False),
    ],
    ids=["api-status", "poller-status", "unknown-status", "no-status", "list", "id", "junk"],
)
def test_a_record_line_has_a_status_batchpoll_writes(line: bytes, ours: bool) -> None:
    """parse_record takes only JSON objects whose status is one of batchpoll's."""
    assert (parse_record(line) is not None) is ours


def test_record_of_gives_the_resume_key_and_status() -> None:
    """The key is records.record_key's, the input hash included for invalid lines."""
    assert record_of(rec("a", "failed")) == (record_key("a", "failed"), "failed")
    line = b'{"progress_id":"bad id","status":"invalid_input","input_sha256":"ab"}\n'
    assert record_of(line) == (record_key("bad id", "invalid_input", "ab"), "invalid_input")
    assert record_of(b"a\n") is None


@pytest.mark.parametrize(
    ("tail", "ours"),
    [
        (b"", True),
        (b"{", True),
        (b'{"progress_id":"a","sta', True),
        (rec("a") + b'{"pro', True),
        (rec("a")[:-1], True),
        (b"x", False),
        (b"}", False),
        (b'{"progress_id":"a"}', False),
        (b'{"other":1', False),
        (b"a\n" + b'{"pro', False),
    ],
    ids=[
        "empty",
        "one-byte",
        "cut",
        "line-then-cut",
        "no-newline",
        "letter",
        "brace",
        "whole-json",
        "foreign-start",
        "foreign-line",
    ],
)
def test_could_be_torn_is_whole_records_then_the_start_of_one(tail: bytes, ours: bool) -> None:
    """A torn tail is whole record lines followed by a prefix of a record, nothing else."""
    assert could_be_torn(tail) is ours


@given(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20),
    st.sampled_from(sorted(ALL_STATUSES)),
    st.data(),
)
def test_every_cut_of_a_record_line_could_be_torn(
    pid: str, status: str, data: st.DataObject
) -> None:
    """Wherever a kill cuts a record line (even inside a UTF-8 character), the rest is ours."""
    line = rec("x") + rec(pid, status)
    cut = data.draw(st.integers(0, len(line) - 1))
    assert could_be_torn(line[:cut])
