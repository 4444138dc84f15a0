"""--resume and report read OUTPUT with one reader: same records, same rule for duplicates,
bounded gzip members after a repair, and a directory as OUTPUT refused cleanly."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import orjson
import pytest
from test_output_files import Refusal, refused  # noqa: F401  (a fixture)
from test_sink import prepare

from batchpoll._io.outfile.append import MEMBER_LINES
from batchpoll._io.outfile.read import read_records
from batchpoll._views.report import report_main
from batchpoll.records import DEFAULT_FAIL_ON, Record


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
