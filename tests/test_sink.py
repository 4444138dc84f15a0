"""Output files: whole lines appended, and an earlier run's file made ready for --resume."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpoll.errors import InputFileError
from batchpoll.records import Record
from batchpoll.sink import LineSink, prepare_output


def rec(pid: str, status: str = "completed") -> bytes:
    return Record(progress_id=pid, status=status).to_json_line()


@pytest.mark.anyio
async def test_records_are_appended_as_whole_lines(tmp_path: Path) -> None:
    """Each batch is appended as JSON lines with the contract's keys."""
    path = tmp_path / "out.jsonl"
    sink = LineSink(str(path))
    await sink.write([Record(progress_id="a", status="completed")])
    await sink.write(
        [Record(progress_id="b", status="failed"), Record(progress_id="c", status="error")]
    )
    sink.close()
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["progress_id"] for r in rows] == ["a", "b", "c"]
    assert {"progress_id", "status", "mode", "session_id", "result", "error"} <= set(rows[0])


def test_missing_or_empty_output_is_fine(tmp_path: Path) -> None:
    """Nothing to keep and nothing to refuse when OUTPUT is missing or empty."""
    (tmp_path / "empty").write_bytes(b"")
    for name in ("missing", "empty"):
        prior = prepare_output(
            str(tmp_path / name), resume=False, overwrite=False, retry_statuses=()
        )
        assert prior.done == set()


def test_non_empty_output_is_refused_or_emptied(tmp_path: Path) -> None:
    """Without --resume a non-empty file is refused; --overwrite empties it."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a"))
    with pytest.raises(InputFileError, match=r"--resume.*--overwrite"):
        prepare_output(str(path), resume=False, overwrite=False, retry_statuses=())
    assert path.read_bytes() == rec("a")
    prepare_output(str(path), resume=False, overwrite=True, retry_statuses=())
    assert path.read_bytes() == b""


def test_resume_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A last line without its newline (killed mid-write) is cut; whole records are kept."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + rec("b") + rec("c")[:20])
    prior = prepare_output(str(path), resume=True, overwrite=False, retry_statuses=())
    assert prior.done == {"a", "b"}
    assert prior.torn_bytes == 20
    assert path.read_bytes() == rec("a") + rec("b")


def test_resume_drops_retry_statuses_and_duplicates(tmp_path: Path) -> None:
    """Records in --retry-statuses are dropped to be polled again; a repeated id is kept once."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + rec("b", "error") + rec("a") + rec("c", "timed_out"))
    prior = prepare_output(str(path), resume=True, overwrite=False, retry_statuses={"error"})
    assert prior.done == {"a", "c"}
    assert prior.statuses == {"completed": 1, "timed_out": 1}
    assert path.read_bytes() == rec("a") + rec("c", "timed_out")


def test_resume_drops_lines_that_are_not_records(tmp_path: Path) -> None:
    """Garbage lines in the middle are dropped, so the file stays one record per id."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + b"garbage\n" + b"[1]\n" + rec("b"))
    prior = prepare_output(str(path), resume=True, overwrite=False, retry_statuses=())
    assert prior.done == {"a", "b"}
    assert path.read_bytes() == rec("a") + rec("b")


def test_unopenable_output_is_an_input_file_error(tmp_path: Path) -> None:
    """An output path in a missing directory raises InputFileError (exit 2), not OSError."""
    with pytest.raises(InputFileError, match="cannot open output"):
        LineSink(str(tmp_path / "no" / "such" / "dir.jsonl"))


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("record"), st.text(min_size=1, max_size=20)),
            st.tuples(st.just("junk"), st.binary(max_size=40)),
        ),
        max_size=30,
    ),
    st.binary(max_size=30),
)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_resume_reader_never_crashes_or_loses_a_whole_record(
    tmp_path: Path, parts: list[tuple[str, object]], tail: bytes
) -> None:
    """Over arbitrary bytes, every whole record line survives once and the file ends whole."""
    path = tmp_path / "out.jsonl"
    data, expected = b"", []
    for kind, value in parts:
        if kind == "record":
            assert isinstance(value, str)
            data += rec(value)
            if value not in expected:
                expected.append(value)
        else:
            assert isinstance(value, bytes)
            data += value.replace(b"\n", b"") + b"\n"
    path.write_bytes(data + tail.replace(b"\n", b""))
    prior = prepare_output(str(path), resume=True, overwrite=False, retry_statuses=())
    kept = path.read_bytes()
    assert kept == b"" or kept.endswith(b"\n")
    ids = [orjson.loads(line)["progress_id"] for line in kept.splitlines()]
    assert len(ids) == len(set(ids)) == len(prior.done)
    assert set(expected) <= prior.done
