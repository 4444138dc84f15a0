"""outfile: which files a run may touch, one writer each, and whole-file replacement."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpoll._io.outfile.lock import OutputLock
from batchpoll._io.outfile.plan import RunFiles, check_run_files
from batchpoll._io.outfile.replace import replace_atomically
from batchpoll.errors import InputFileError


def _no_tmp(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "batchpoll-tmp" in p.name]


def test_replace_atomically_writes_through_a_symlink_and_keeps_the_mode(tmp_path: Path) -> None:
    """A symlinked path stays a link, its target gets the bytes and keeps its mode."""
    target = tmp_path / "target"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(target)
    replace_atomically(str(link), [b"new ", b"bytes"])
    assert link.is_symlink()
    assert target.read_bytes() == b"new bytes"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _no_tmp(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError(28, "No space left"), KeyboardInterrupt()])
def test_replace_atomically_leaves_the_old_file_and_no_tmp_on_any_failure(
    tmp_path: Path, failure: BaseException
) -> None:
    """A failure mid-write (an error, an interrupt) leaves the old contents and no temporary."""
    path = tmp_path / "out"
    path.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise failure

    with pytest.raises(type(failure)):
        replace_atomically(str(path), chunks())
    assert path.read_bytes() == b"old"
    assert _no_tmp(tmp_path) == []


def test_replace_atomically_fsyncs_the_new_file_renames_it_then_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new contents are whole and durable in a temporary file in the same directory before
    the rename; until then the path holds the old contents whole; the directory is fsynced
    after, so the rename survives a crash too."""
    path = tmp_path / "summary.json"
    path.write_bytes(b"old, whole")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync dir", os.path.realpath(f"/proc/self/fd/{fd}")))
        else:
            events.append(("fsync file", os.pread(fd, 100, 0).decode()))

    def replace(src: str, dst: str) -> None:
        assert Path(dst).read_bytes() == b"old, whole"
        assert os.path.dirname(src) == os.path.dirname(dst)
        events.append(("rename", Path(src).read_bytes().decode()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    replace_atomically(str(path), b"new, whole")
    assert events == [
        ("fsync file", "new, whole"),
        ("rename", "new, whole"),
        ("fsync dir", os.path.realpath(tmp_path)),
    ]
    assert path.read_bytes() == b"new, whole"
    assert _no_tmp(tmp_path) == []


def test_a_lock_is_refused_to_a_second_holder_and_follows_a_replace(tmp_path: Path) -> None:
    """A second lock on the file (even by another spelling) is refused, before and after the
    file was replaced under the first; closing the first frees it."""
    path = tmp_path / "out.jsonl"
    first = OutputLock(str(path), "output")
    with pytest.raises(InputFileError, match=f"process {os.getpid()}"):
        OutputLock(str(tmp_path / "." / "out.jsonl"), "output")
    replace_atomically(str(path), [b"x\n"], keep_open=first.adopt)
    with pytest.raises(InputFileError, match="being written by"):
        OutputLock(str(path), "output")
    os.write(first.fd, b"y\n")
    assert path.read_bytes() == b"x\ny\n"
    first.close()
    OutputLock(str(path), "output").close()


def test_two_parts_on_one_file_are_refused(tmp_path: Path) -> None:
    """The summary and JUnit on one path, or OUTPUT through a hard link to the input: refused."""
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    with pytest.raises(InputFileError, match="is also"):
        check_run_files(
            RunFiles(
                input=str(ids),
                output="-",
                summary=str(tmp_path / "r.json"),
                junit=str(tmp_path / "x" / ".." / "r.json"),
            )
        )
    os.link(ids, tmp_path / "out.jsonl")
    with pytest.raises(InputFileError, match="same file as the input"):
        check_run_files(RunFiles(input=str(ids), output=str(tmp_path / "out.jsonl")))


def test_a_device_is_never_locked(tmp_path: Path) -> None:
    """Two runs may both write to /dev/null: only regular files and directories are locked."""
    first = OutputLock(os.devnull, "output")
    second = OutputLock(os.devnull, "output")
    first.close()
    second.close()
