"""Output files: whole lines appended, and an earlier run's file made ready for --resume."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpoll.errors import InputFileError
from batchpoll.records import Record
from batchpoll.sink import LineSink, SplitSink, prepare_output


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


@pytest.mark.anyio
async def test_gzip_output_is_one_member_per_batch_and_resume_cuts_a_torn_member(
    tmp_path: Path,
) -> None:
    """A .gz OUTPUT is valid gzip; a torn last member is cut on --resume, whole ones kept."""
    import gzip

    path = tmp_path / "out.jsonl.gz"
    sink = LineSink(str(path))
    await sink.write([Record(progress_id="a", status="completed")])
    await sink.write([Record(progress_id="b", status="failed")])
    sink.close()
    assert [
        orjson.loads(x)["progress_id"] for x in gzip.decompress(path.read_bytes()).splitlines()
    ] == ["a", "b"]
    torn = gzip.compress(rec("c"))[:-9]
    path.write_bytes(path.read_bytes() + torn)
    prior = prepare_output(str(path), resume=True, overwrite=False, retry_statuses=())
    assert prior.done == {"a", "b"}
    assert prior.torn_bytes == len(torn)
    assert gzip.decompress(path.read_bytes()) == rec("a") + rec("b", "failed")


def test_overwriting_a_gzip_output_leaves_an_empty_file(tmp_path: Path) -> None:
    """--overwrite on a .gz OUTPUT leaves no records, so the next run need not --resume."""
    import gzip

    path = tmp_path / "out.jsonl.gz"
    path.write_bytes(gzip.compress(rec("a")))
    prepare_output(str(path), resume=False, overwrite=True, retry_statuses=())
    assert path.read_bytes() == b""


@pytest.mark.anyio
async def test_split_by_status_writes_one_file_per_status_and_resets_from_output(
    tmp_path: Path,
) -> None:
    """--split-by-status DIR appends each record to DIR/<status>.jsonl; reset rebuilds them."""
    split = SplitSink(str(tmp_path / "by-status"))
    await split.write(
        [Record(progress_id="a", status="completed"), Record(progress_id="b", status="failed")]
    )
    await split.write([Record(progress_id="c", status="completed")])
    split.close()
    folder = tmp_path / "by-status"
    assert (folder / "completed.jsonl").read_bytes() == rec("a") + rec("c")
    assert (folder / "failed.jsonl").read_bytes() == rec("b", "failed")
    split.reset([rec("a"), rec("d", "error")])
    assert (folder / "completed.jsonl").read_bytes() == rec("a")
    assert (folder / "failed.jsonl").read_bytes() == b""
    assert (folder / "error.jsonl").read_bytes() == rec("d", "error")
