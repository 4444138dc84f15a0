"""--resume and report read OUTPUT with one reader: same records, same rule for duplicates,
bounded gzip members after a repair, and a directory as OUTPUT refused cleanly."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from xml.etree import ElementTree

import orjson
import pytest
from test_cli import SIM, batchpoll, ids_ending, run_args, write_ids
from test_output_files import Refusal, leftovers, refused  # noqa: F401  (a fixture)
from test_sink import prepare

from batchpoll._io.outfile.append import MEMBER_LINES
from batchpoll._io.outfile.read import Reading, read_records
from batchpoll._views.report import report_main
from batchpoll.errors import InputFileError
from batchpoll.records import DEFAULT_FAIL_ON, Record
from batchpoll.simulator.server import running_simulator


def line(pid: str, status: str) -> bytes:
    return Record(progress_id=pid, status=status).to_json_line()


def test_resume_and_report_keep_the_same_record_of_a_repeated_id(tmp_path: Path) -> None:
    """Two records for one id: report counts the first and says one was left out; --resume
    keeps that same first one."""
    path = tmp_path / "merged.jsonl"
    path.write_bytes(line("a", "completed") + line("b", "failed") + line("a", "failed"))
    out = io.StringIO()
    code = report_main(str(path), as_json=True, fail_on=DEFAULT_FAIL_ON, out=out)
    summary = orjson.loads(out.getvalue())
    assert (code, summary["by_status"]) == (1, {"completed": 1, "failed": 1})
    assert summary["duplicates_dropped"] == 1
    text = io.StringIO()
    report_main(str(path), as_json=False, fail_on=DEFAULT_FAIL_ON, out=text)
    assert "1 later records of an id left out" in text.getvalue()
    prior = prepare(path, resume=True)
    assert prior.statuses == {"completed": 1, "failed": 1}
    assert path.read_bytes() == line("a", "completed") + line("b", "failed")
    assert [r["status"] for r in read_records(str(path))] == ["completed", "failed"]


def _members(data: bytes) -> list[int]:
    """The number of lines in each gzip member of *data*."""
    sizes = []
    while data:
        member = zlib.decompressobj(wbits=31)
        sizes.append(member.decompress(data).count(b"\n"))
        data = member.unused_data
    return sizes


def test_a_rewritten_gzip_output_is_in_bounded_members(tmp_path: Path) -> None:
    """A .gz rewritten by --resume holds members of at most MEMBER_LINES lines, not one."""
    path = tmp_path / "out.jsonl.gz"
    n = 3 * MEMBER_LINES + 10
    body = b"".join(line(f"id-{i}", "completed") for i in range(n))
    path.write_bytes(gzip.compress(body + line("again", "error")))
    prior = prepare(path, resume=True, retry=frozenset({"error"}))
    assert len(prior.done) == n
    sizes = _members(path.read_bytes())
    assert sum(sizes) == n
    assert max(sizes) <= MEMBER_LINES
    assert len(sizes) == 4


@pytest.mark.parametrize("mode", [[], ["--overwrite"], ["--resume"]], ids=["plain", "ow", "resume"])
def test_a_directory_as_output_is_one_clear_error_and_leaves_nothing(
    tmp_path: Path,
    refused: Refusal,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    mode: list[str],
) -> None:
    """-o DIR: exit 2 with one message, in every mode, and no temporary file left in DIR."""
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    folder = tmp_path / "out"
    folder.mkdir()
    err = refused(capsys, ids, "-o", str(folder), *mode)
    assert "Is a directory" in err
    assert err.count("\n") == 1
    assert list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if "batchpoll-tmp" in p.name] == []


def _report(path: Path) -> tuple[dict[str, int], Reading]:
    """What ``batchpoll report`` counts in *path*, and what its reader passed over."""
    reading = Reading()
    rows = list(read_records(str(path), reading))
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    return by_status, reading


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_torn_tail_of_one_byte_is_cut_on_resume_and_left_out_by_report(
    tmp_path: Path, gz: bool
) -> None:
    """One byte after the last whole line (``{``) or gzip member (its first header byte): report
    leaves exactly that byte out, and --resume cuts exactly it and keeps the same records."""
    whole = line("a", "completed") + line("b", "failed")
    path = tmp_path / ("out.jsonl.gz" if gz else "out.jsonl")
    data = gzip.compress(whole, mtime=0) if gz else whole
    path.write_bytes(data + (b"\x1f" if gz else b"{"))
    by_status, reading = _report(path)
    assert (by_status, reading.torn, reading.not_records) == ({"completed": 1, "failed": 1}, 1, 0)
    prior = prepare(path, resume=True)
    assert (prior.statuses, prior.torn_bytes, prior.replaced) == (by_status, 1, 0)
    assert path.read_bytes() == data
    assert _report(path)[0] == by_status


@pytest.mark.parametrize("tail", [b"x", b"}", b"["], ids=repr)
def test_a_one_byte_tail_that_starts_no_record_is_refused_and_kept(
    tmp_path: Path, tail: bytes
) -> None:
    """One byte that no batchpoll record begins with is not a torn record: --resume refuses the
    file and leaves it whole, while report still counts the same whole records."""
    whole = line("a", "completed")
    path = tmp_path / "out.jsonl"
    path.write_bytes(whole + tail)
    with pytest.raises(InputFileError, match="its last 1 bytes are not the start"):
        prepare(path, resume=True)
    assert path.read_bytes() == whole + tail
    assert _report(path)[0] == {"completed": 1}


def _damage(member: bytes, where: str) -> bytes:
    """*member* (one gzip member) with its CRC-32 or its length trailer broken, not cut."""
    at = len(member) - (8 if where == "crc" else 4)
    return member[:at] + bytes([member[at] ^ 0xFF]) + member[at + 1 :]


@pytest.mark.parametrize("where", ["crc", "size"])
@pytest.mark.parametrize("damaged", [0, 1, 2], ids=["first", "middle", "last"])
def test_resume_refuses_a_damaged_gzip_member_and_changes_nothing(
    tmp_path: Path,
    refused: Refusal,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    damaged: int,
    where: str,
) -> None:
    """--resume of a .gz OUTPUT with a whole but damaged member, even the last one: exit 2
    naming the member's first byte, before any request, and the file byte for byte as it
    was, so no record is lost (cut away) or doubled (polled again and appended)."""
    members = [gzip.compress(line(f"cli-{i}", "completed"), mtime=0) for i in range(3)]
    members[damaged] = _damage(members[damaged], where)
    out = tmp_path / "out.jsonl.gz"
    out.write_bytes(b"".join(members))
    ids = tmp_path / "ids.txt"
    ids.write_text("cli-0\ncli-1\ncli-2\ncli-3\n")
    err = refused(capsys, ids, "-o", str(out), "--resume")
    offset = sum(len(m) for m in members[:damaged])
    assert f"output {out} is not gzip, or is damaged at byte {offset}" in err
    assert out.read_bytes() == b"".join(members)
    with pytest.raises(InputFileError, match=f"damaged at byte {offset}$"):
        list(read_records(str(out)))  # report refuses it too, rather than count a part


@pytest.mark.anyio
async def test_summary_and_junit_replace_the_old_files_whole_by_rename(tmp_path: Path) -> None:
    """A rerun's --summary and --junit take the place of the old files by a rename: a reader
    holding an old file still reads it whole, the paths hold the new ones whole, and no
    temporary file is left (a file written in place would have changed under the reader)."""
    ids = write_ids(tmp_path, [*ids_ending("completed", 3), *ids_ending("failed", 1)])
    out, summary, junit = tmp_path / "out.jsonl", tmp_path / "summary.json", tmp_path / "j.xml"
    async with running_simulator(SIM) as sim:
        args = [*run_args(sim, ids, "-o", str(out)), "--summary", str(summary)]
        args += ["--junit", str(junit)]
        code, _, err = await batchpoll(args, tmp_path)
        assert code == 1, err
        requests = sim.stats.requests
        first = {p: p.read_bytes() for p in (summary, junit)}
        with summary.open("rb") as old_summary, junit.open("rb") as old_junit:
            code, _, err = await batchpoll([*args, "--resume"], tmp_path)
            assert code == 1, err
            assert sim.stats.requests == requests  # every id was kept: nothing polled again
            assert old_summary.read() == first[summary]
            assert old_junit.read() == first[junit]
            for old, new in ((old_summary, summary), (old_junit, junit)):
                assert os.fstat(old.fileno()).st_ino != new.stat().st_ino
    assert orjson.loads(first[summary])["resumed"] == 0
    assert orjson.loads(summary.read_bytes())["resumed"] == 4
    root = ElementTree.fromstring(junit.read_bytes())
    assert (root.attrib["tests"], root.attrib["failures"]) == ("4", "1")
    assert leftovers(tmp_path) == []
