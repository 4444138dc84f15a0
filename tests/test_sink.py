"""Output files: whole lines appended, and an earlier run's file made ready for --resume."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpoll._io.outfile.append import LineSink
from batchpoll._io.outfile.lock import OutputLock
from batchpoll._io.outfile.repair import Prior, prepare_output
from batchpoll._io.outfile.split import SplitSink
from batchpoll.errors import InputFileError
from batchpoll.records import Record


def rec(pid: str, status: str = "completed") -> bytes:
    return Record(progress_id=pid, status=status).to_json_line()


def prepare(
    path: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    retry: frozenset[str] = frozenset(),
) -> Prior:
    """prepare_output as a run calls it: with OUTPUT locked for the call."""
    lock = OutputLock(str(path), "output")
    try:
        return prepare_output(
            str(path), lock, resume=resume, overwrite=overwrite, retry_statuses=retry
        )
    finally:
        lock.close()


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
        prior = prepare(tmp_path / name)
        assert prior.done == set()


def test_non_empty_output_is_refused_or_emptied(tmp_path: Path) -> None:
    """Without --resume a non-empty file is refused; --overwrite empties it."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a"))
    with pytest.raises(InputFileError, match=r"--resume.*--overwrite"):
        prepare(path)
    assert path.read_bytes() == rec("a")
    prepare(path, overwrite=True)
    assert path.read_bytes() == b""


def test_resume_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A last line without its newline (killed mid-write) is cut; whole records are kept."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + rec("b") + rec("c")[:20])
    prior = prepare(path, resume=True)
    assert prior.done == {"a", "b"}
    assert prior.torn_bytes == 20
    assert path.read_bytes() == rec("a") + rec("b")


def test_resume_drops_retry_statuses_and_duplicates(tmp_path: Path) -> None:
    """Records in --retry-statuses are dropped to be polled again; a repeated id is kept once."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + rec("b", "error") + rec("a") + rec("c", "timed_out"))
    prior = prepare(path, resume=True, retry=frozenset({"error"}))
    assert prior.done == {"a", "c"}
    assert prior.statuses == {"completed": 1, "timed_out": 1}
    assert path.read_bytes() == rec("a") + rec("c", "timed_out")


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (rec("a") + b"garbage\n" + rec("b"), 2),
        (b"[1]\n" + rec("a"), 1),
        (rec("a") + b"\n" + rec("b"), 2),
        (rec("a") + b'{"progress_id": "x", "status": "unheard_of"}\n', 2),
        (b"id-1\nid-2\n", 1),
    ],
    ids=["garbage", "json-array", "blank-line", "unknown-status", "an-ids-file"],
)
def test_resume_refuses_a_file_with_a_line_that_is_not_a_record(
    tmp_path: Path, body: bytes, line: int
) -> None:
    """--resume refuses OUTPUT holding a line that is not a record, names it, and leaves it."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(body)
    for mode in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(InputFileError, match=rf"line {line} is not a batchpoll record"):
            prepare(path, **mode)  # type: ignore[arg-type]
        assert path.read_bytes() == body


@pytest.mark.parametrize(
    "tail",
    [b"id-without-newline", b"[1, 2", b'{"status": "completed"'],
    ids=["ids-line", "json", "other-key-first"],
)
def test_resume_refuses_a_torn_tail_batchpoll_cannot_have_written(
    tmp_path: Path, tail: bytes
) -> None:
    """A last line without its newline is cut only when it is the start of a record."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + tail)
    with pytest.raises(InputFileError, match="not the start of a batchpoll record"):
        prepare(path, resume=True)
    assert path.read_bytes() == rec("a") + tail


def test_a_single_id_without_newline_is_never_taken_for_a_torn_record(tmp_path: Path) -> None:
    """A one-line ids file without a final newline, given as OUTPUT, is refused, not emptied."""
    path = tmp_path / "ids.txt"
    path.write_bytes(b"abc")
    with pytest.raises(InputFileError):
        prepare(path, resume=True)
    assert path.read_bytes() == b"abc"


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
def test_resume_either_keeps_every_record_once_or_changes_nothing(
    tmp_path: Path, parts: list[tuple[str, object]], tail: bytes
) -> None:
    """Over arbitrary bytes, a resume keeps every whole record once, or refuses untouched."""
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
    data += tail.replace(b"\n", b"")
    path.write_bytes(data)
    try:
        prior = prepare(path, resume=True)
    except InputFileError:
        assert path.read_bytes() == data
        return
    kept = path.read_bytes()
    assert kept == b"".join(rec(pid) for pid in expected)
    ids = [orjson.loads(line)["progress_id"] for line in kept.splitlines()]
    assert ids == expected
    assert len(ids) == len(prior.done)


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
    prior = prepare(path, resume=True)
    assert prior.done == {"a", "b"}
    assert prior.torn_bytes == len(torn)
    assert gzip.decompress(path.read_bytes()) == rec("a") + rec("b", "failed")


def test_overwriting_a_gzip_output_leaves_an_empty_file(tmp_path: Path) -> None:
    """--overwrite on a .gz OUTPUT leaves no records, so the next run need not --resume."""
    import gzip

    path = tmp_path / "out.jsonl.gz"
    path.write_bytes(gzip.compress(rec("a")))
    prepare(path, overwrite=True)
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
    folder = tmp_path / "by-status"
    assert (folder / "completed.jsonl").read_bytes() == rec("a") + rec("c")
    assert (folder / "failed.jsonl").read_bytes() == rec("b", "failed")
    split.reset([rec("a"), rec("d", "error")])
    split.close()
    assert (folder / "completed.jsonl").read_bytes() == rec("a")
    assert (folder / "failed.jsonl").read_bytes() == b""
    assert (folder / "error.jsonl").read_bytes() == rec("d", "error")


@pytest.mark.parametrize(
    "tail",
    [b'{"progress_id":"keepme-1"}', b'{"progress_id":"x","status":"unheard_of"}'],
    ids=["no-status", "unknown-status"],
)
def test_a_whole_json_tail_that_is_not_a_record_is_never_cut(tmp_path: Path, tail: bytes) -> None:
    """An unterminated last line that is complete JSON but no record is not ours: refused."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(rec("a") + tail)
    for mode in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(InputFileError, match="not the start of a batchpoll record"):
            prepare(path, **mode)  # type: ignore[arg-type]
        assert path.read_bytes() == rec("a") + tail


def test_a_torn_gzip_member_of_foreign_lines_is_never_cut(tmp_path: Path) -> None:
    """A .gz whose torn last member holds lines that are not records is refused untouched."""
    import gzip

    path = tmp_path / "out.jsonl.gz"
    foreign = gzip.compress(b"".join(b"precious-%d\n" % i for i in range(5000)))[:3000]
    data = gzip.compress(rec("a")) + foreign
    path.write_bytes(data)
    with pytest.raises(InputFileError, match="not the start of a batchpoll record"):
        prepare(path, resume=True)
    assert path.read_bytes() == data
    path.write_bytes(foreign)
    with pytest.raises(InputFileError):
        prepare(path, resume=True)
    assert path.read_bytes() == foreign


def test_a_gzip_bomb_as_output_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A .gz member inflating past MAX_MEMBER_BYTES is refused, not held whole."""
    import resource
    import zlib

    from batchpoll._io.outfile.read import MAX_MEMBER_BYTES

    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\n" * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(MAX_MEMBER_BYTES // len(chunk) + 64))
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(bomb + packer.flush())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputFileError, match="gzip member of more than"):
        prepare(path, resume=True)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 2 * MAX_MEMBER_BYTES // 1024


@pytest.mark.anyio
async def test_a_big_gzip_batch_is_written_in_bounded_members(tmp_path: Path) -> None:
    """A batch over MEMBER_BYTES of text goes out as several gzip members, all read back."""
    import gzip
    import zlib

    from batchpoll._io.outfile.append import MEMBER_BYTES

    path = tmp_path / "out.jsonl.gz"
    sink = LineSink(str(path))
    big = "x" * (1 << 20)
    records = [Record(progress_id=f"r{i}", status="completed", result=big) for i in range(12)]
    await sink.write(records)
    sink.close()
    data, members = path.read_bytes(), 0
    while data:
        member = zlib.decompressobj(wbits=31)
        assert len(member.decompress(data)) <= MEMBER_BYTES + (2 << 20)
        data, members = member.unused_data, members + 1
    assert members >= 2
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 12
    assert prepare(path, resume=True).done == {f"r{i}" for i in range(12)}


def test_a_gzip_member_ending_in_a_torn_line_is_cut_by_a_rewrite(tmp_path: Path) -> None:
    """A torn plain OUTPUT gzipped whole: its unterminated last line, if the start of a record,
    is cut (the file rewritten); anything else there is refused, the file untouched."""
    import gzip

    path = tmp_path / "out.jsonl.gz"
    path.write_bytes(gzip.compress(rec("a") + rec("b")) + gzip.compress(b'{"progress_id":"c'))
    prior = prepare(path, resume=True)
    assert prior.done == {"a", "b"}
    assert gzip.decompress(path.read_bytes()) == rec("a") + rec("b")
    foreign = gzip.compress(rec("a") + b"hello")
    path.write_bytes(foreign)
    with pytest.raises(InputFileError, match="not the start of a batchpoll record"):
        prepare(path, resume=True)
    assert path.read_bytes() == foreign
