"""Only what batchpoll wrote is ever cut, replaced or emptied; one run per OUTPUT; every way out
leaves the records, the summary and JUnit behind. Real processes against the simulator, and
refusals in this process against a listener that must never be connected to."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
from helpers import KEY
from test_cli import FAST, batchpoll, ids_ending, lines, write_ids

from batchpoll._cli.main import main
from batchpoll.simulator import SimSettings, Simulator, running_simulator

pytestmark = pytest.mark.anyio

SIM = SimSettings(seed=11, api_key=KEY, min_polls=1, max_polls=2)


def run(sim: Simulator, ids: Path | str, *extra: str) -> list[str]:
    return ["run", str(ids), "--base-url", sim.url, *FAST, *extra]


class Refusal:
    """``batchpoll run`` in this process, pointed at a loopback listener that never answers:
    a refusal must come with exit 2 before anything connects to it."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        for name in [k for k in os.environ if k.startswith(("BATCHPOLL_", "CEKURA_"))]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("CEKURA_API_KEY", KEY)

    def __call__(self, capsys: pytest.CaptureFixture[str], ids: Path | str, *extra: str) -> str:
        argv = ["run", str(ids), "--base-url", self.url, *FAST, "--deadline", "2", *extra]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        with pytest.raises(BlockingIOError):
            self.listener.accept()  # nothing ever connected
        return err


@pytest.fixture
def refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Refusal]:
    refusal = Refusal(tmp_path, monkeypatch)
    with refusal.listener:
        yield refusal


def leftovers(*folders: Path) -> list[str]:
    return [p.name for d in folders for p in d.iterdir() if "batchpoll-tmp" in p.name]


def test_split_dir_holding_output_and_input_is_refused_untouched(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str]
) -> None:
    """--split-by-status on the directory of OUTPUT and the input: exit 2, no file changed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "ids.jsonl").write_bytes(b"cli-1\ncli-2\n")
    (out / "precious.jsonl").write_bytes(b'{"a":1}\n')
    (out / "results.jsonl").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = refused(
        capsys, out / "ids.jsonl", "-o", str(out / "results.jsonl"), "--split-by-status", str(out)
    )
    assert "--split-by-status" in err
    assert "holds" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


async def test_split_touches_only_status_files_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    """Other *.jsonl in DIR are left alone; a <status>.jsonl that is not records is refused."""
    ids = write_ids(tmp_path, ids_ending("completed", 3))
    split = tmp_path / "split"
    split.mkdir()
    (split / "precious.jsonl").write_bytes(b'{"a":1}\n')
    (split / "completed.jsonl").write_bytes(b"my notes\n")
    async with running_simulator(SIM) as sim:
        args = [*run(sim, ids, "-o", str(tmp_path / "r.jsonl")), "--split-by-status", str(split)]
        code, _, err = await batchpoll(args, tmp_path)
        assert (code, sim.stats.requests) == (2, 0), err
        assert b"completed.jsonl: line 1 is not a batchpoll record" in err
        assert (split / "completed.jsonl").read_bytes() == b"my notes\n"
        (split / "completed.jsonl").unlink()
        code, _, err = await batchpoll(args, tmp_path)
    assert code == 0, err
    assert (split / "precious.jsonl").read_bytes() == b'{"a":1}\n'
    assert len(lines((split / "completed.jsonl").read_bytes())) == 3


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]], ids=["plain", "resume", "ow"])
@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused_in_every_mode(
    tmp_path: Path,
    refused: Refusal,
    capsys: pytest.CaptureFixture[str],
    mode: list[str],
    spelling: str,
) -> None:
    """OUTPUT naming the input file by any path (itself, a symlink, a hard link): exit 2."""
    ids = write_ids(tmp_path, ["cli-1", "cli-2"])
    out = tmp_path / "out.jsonl"
    if spelling == "same":
        out = ids
    elif spelling == "symlink":
        out.symlink_to(ids)
    else:
        os.link(ids, out)
    refused(capsys, ids, "-o", str(out), *mode)
    assert ids.read_bytes() == b"cli-1\ncli-2\n"


async def test_stdin_redirected_from_output_is_refused(tmp_path: Path) -> None:
    """`run - -o out.jsonl < out.jsonl`: the input is OUTPUT through a redirect; exit 2."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps({"progress_id": "a", "status": "completed"}) + b"\n")
    async with running_simulator(SIM) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
        env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, "-", "-o", str(out), "--resume")]
        with out.open("rb") as stdin:
            proc = await anyio.run_process(cmd, stdin=stdin, env=env, check=False)
        assert sim.stats.requests == 0
    assert proc.returncode == 2, proc.stderr
    assert b"same file" in proc.stderr


def test_resume_of_an_ids_file_as_output_names_the_line_and_keeps_it(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume onto a file of ids (not records) is refused with its line number, untouched."""
    ids = write_ids(tmp_path, ["cli-1"])
    other = tmp_path / "other.txt"
    other.write_bytes(b"# my ids\ncli-9\n")
    err = refused(capsys, ids, "-o", str(other), "--resume")
    assert "line 1 is not a batchpoll record" in err
    assert other.read_bytes() == b"# my ids\ncli-9\n"


@pytest.mark.parametrize(
    ("flag", "target"),
    [("--summary", "input"), ("--summary", "output"), ("--junit", "input"), ("--junit", "output")],
)
def test_a_report_file_that_is_output_or_input_is_refused(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str], flag: str, target: str
) -> None:
    """--summary or --junit naming OUTPUT or the input (through a symlink too): exit 2."""
    ids = write_ids(tmp_path, ["cli-1"])
    out = tmp_path / "out.jsonl"
    link = tmp_path / "report-link"
    link.symlink_to(ids if target == "input" else out)
    err = refused(capsys, ids, "-o", str(out), flag, str(link))
    assert "same file" in err or "is also" in err
    assert ids.read_bytes() == b"cli-1\n"


@pytest.mark.parametrize("problem", ["missing-dir", "a-directory", "foreign-file"])
@pytest.mark.parametrize("flag", ["--summary", "--junit"])
def test_an_unwritable_report_path_is_refused_before_any_request(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str], flag: str, problem: str
) -> None:
    """A --summary/--junit path that cannot be written, or is not ours, is exit 2 at start."""
    ids = write_ids(tmp_path, ["cli-1", "cli-2"])
    path = tmp_path / "report"
    if problem == "missing-dir":
        path = tmp_path / "no" / "such" / "report"
    elif problem == "a-directory":
        path.mkdir()
    else:
        path.write_bytes(b"my own notes\n")
    refused(capsys, ids, "-o", str(tmp_path / "out.jsonl"), flag, str(path))
    if problem == "foreign-file":
        assert path.read_bytes() == b"my own notes\n"


async def test_a_second_run_on_the_same_output_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    """Two runs on one OUTPUT, however spelt: the second exits 2 naming the first's pid; after
    the first is killed (-9), --resume takes the file at once."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(5)])
    out = tmp_path / "out.jsonl"
    (tmp_path / "sub").mkdir()
    other_spelling = tmp_path / "sub" / ".." / "out-link"
    (tmp_path / "out-link").symlink_to(out)
    async with running_simulator(slow) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
        env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
        first_cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(out))]
        async with await anyio.open_process(first_cmd, env=env) as first:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= 1)
            code, _, err = await batchpoll(run(sim, ids, "-o", str(other_spelling)), tmp_path)
            assert code == 2, err
            assert f"process {first.pid}".encode() in err
            first.send_signal(signal.SIGKILL)
            await first.wait()
        fast = [*run(sim, ids, "-o", str(out), "--resume", "--deadline", "0.5")]
        code, _, err = await batchpoll(fast, tmp_path)
    assert code in (0, 1), err  # it ran: the killed run's lock is gone
    assert b"being written by" not in err


async def test_a_repair_keeps_a_symlinked_output_a_link_with_its_mode(tmp_path: Path) -> None:
    """--resume that rewrites OUTPUT writes through its symlink, keeps the mode, leaves no tmp."""
    ids = ids_ending("completed", 3)
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    target = target_dir / "results.jsonl"
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    records = [
        orjson.dumps({"progress_id": ids[0], "status": "error"}) + b"\n",
        orjson.dumps({"progress_id": ids[1], "status": "completed"}) + b"\n",
    ]
    target.write_bytes(b"".join(records))
    target.chmod(0o600)
    async with running_simulator(SIM) as sim:
        args = run(sim, write_ids(tmp_path, ids), "-o", str(link), "--resume")
        code, _, err = await batchpoll([*args, "--retry-statuses", "error"], tmp_path)
    assert code == 0, err
    assert link.is_symlink()
    assert link.resolve() == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    got = lines(target.read_bytes())
    assert sorted(str(r["progress_id"]) for r in got) == sorted(ids)
    assert {r["status"] for r in got} == {"completed"}
    assert leftovers(tmp_path, target_dir) == []


async def test_overwrite_empties_output_in_place(tmp_path: Path) -> None:
    """--overwrite keeps the file itself (inode, mode, hard links) and only empties it."""
    ids = ids_ending("completed", 2)
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps({"progress_id": "old", "status": "failed"}) + b"\n")
    out.chmod(0o640)
    os.link(out, tmp_path / "also-out.jsonl")
    inode = out.stat().st_ino
    async with running_simulator(SIM) as sim:
        args = run(sim, write_ids(tmp_path, ids), "-o", str(out), "--overwrite")
        code, _, err = await batchpoll(args, tmp_path)
    assert code == 0, err
    assert out.stat().st_ino == inode
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert (tmp_path / "also-out.jsonl").read_bytes() == out.read_bytes()
    assert sorted(str(r["progress_id"]) for r in lines(out.read_bytes())) == sorted(ids)


async def test_a_refused_key_still_leaves_summary_and_junit(tmp_path: Path) -> None:
    """Exit 3 (key refused): the summary and JUnit are written all the same, saying 3."""
    ids = write_ids(tmp_path, ids_ending("completed", 2))
    summary, junit = tmp_path / "summary.json", tmp_path / "junit.xml"
    async with running_simulator(SIM) as sim:
        args = [*run(sim, ids, "-o", str(tmp_path / "out.jsonl")), "--summary", str(summary)]
        code, _, err = await batchpoll(
            [*args, "--junit", str(junit)], tmp_path, env={"CEKURA_API_KEY": "wrong-key"}
        )
    assert code == 3, err
    assert json.loads(summary.read_bytes())["exit_code"] == 3
    assert junit.read_bytes().startswith(b"<?xml")


async def test_a_signal_still_leaves_the_summary(tmp_path: Path) -> None:
    """SIGTERM: exit 143 with a summary that says so; a rerun may replace that summary."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(5)])
    summary = tmp_path / "summary.json"
    async with running_simulator(slow) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
        env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(tmp_path / "o.jsonl"))]
        async with await anyio.open_process([*cmd, "--summary", str(summary)], env=env) as proc:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= 1)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(5):
                assert await proc.wait() == 143
    facts = json.loads(summary.read_bytes())
    assert (facts["exit_code"], facts["stopped_by_signal"]) == (143, signal.SIGTERM)


async def test_an_invalid_line_never_swallows_a_valid_id(tmp_path: Path) -> None:
    """`{x` (invalid JSON) and the id "{x" get a record each; --resume finds both again."""
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b'{x\n{"progress_id":"{x"}\n' + b"z" * 299 + b"1\n" + b"z" * 299 + b"2\n")
    out = tmp_path / "out.jsonl"
    async with running_simulator(SIM) as sim:
        code, _, err = await batchpoll(
            [*run(sim, ids, "-o", str(out)), "--fail-on", "none"], tmp_path
        )
        assert code == 0, err
        assert sim.stats.requests >= 1
        got = lines(out.read_bytes())
        curly = sorted(r["status"] == "invalid_input" for r in got if r["progress_id"] == "{x")
        assert curly == [False, True]
        invalid = [r for r in got if r["status"] == "invalid_input"]
        assert len(invalid) == 3
        assert len({r["input_sha256"] for r in invalid}) == 3
        assert sorted(r["input_line"] for r in invalid) == [1, 3, 4]
        before = sim.stats.requests
        code, _, err = await batchpoll([*run(sim, ids, "-o", str(out)), "--resume"], tmp_path)
        assert code == 1, err  # invalid_input is in the default --fail-on
        assert sim.stats.requests == before
    assert len(lines(out.read_bytes())) == 4


def test_an_internal_error_still_writes_the_summary_then_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the run (here: the engine raising) still leaves a summary saying exit 1."""
    from dataclasses import replace

    from helpers import FAST as SETTINGS

    from batchpoll._cli import run as runner

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runner, "_run_engine", broken)
    ids = write_ids(tmp_path, ["a"])
    summary = tmp_path / "summary.json"
    settings = replace(
        SETTINGS, output=str(tmp_path / "o.jsonl"), summary=str(summary), progress=False
    )
    with pytest.raises(RuntimeError, match="a bug"):
        runner.run_settings(settings, str(ids))
    assert json.loads(summary.read_bytes())["exit_code"] == 1


async def test_two_runs_appending_stdout_to_one_file_are_one_too_many(tmp_path: Path) -> None:
    """`>> out.jsonl` from two runs at once: the second is refused like a second -o."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(3)])
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
    async with running_simulator(slow) as sim:
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids)]
        with out.open("ab") as first_out, out.open("ab") as second_out:
            async with await anyio.open_process(cmd, stdout=first_out, env=env) as first:
                with anyio.fail_after(20):
                    await sim.wait_until(lambda st: st.requests >= 1)
                second = await anyio.run_process(cmd, stdout=second_out, env=env, check=False)
                first.send_signal(signal.SIGTERM)
                await first.wait()
    assert second.returncode == 2
    assert f"process {first.pid}".encode() in second.stderr


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    return env | {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}


async def test_a_run_refused_for_a_lock_has_changed_nothing(tmp_path: Path) -> None:
    """A second run on a split DIR another run holds is refused before its own OUTPUT is
    emptied (--overwrite) or cut (--resume); and neither run may take the other's status
    file as OUTPUT, whichever started first."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(3)])
    split = tmp_path / "split"
    record = orjson.dumps({"progress_id": "old", "status": "completed"}) + b"\n"
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(record + b'{"progress_id":"tor')
    async with running_simulator(slow) as sim:
        first = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(tmp_path / "a.jsonl"))]
        first += ["--split-by-status", str(split)]
        async with await anyio.open_process(first, env=_child_env(tmp_path)) as proc:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= 1)
            for mode in ("--overwrite", "--resume"):
                args = [*run(sim, ids, "-o", str(mine), mode), "--split-by-status", str(split)]
                code, _, err = await batchpoll(args, tmp_path)
                assert code == 2, err
                assert f"process {proc.pid}".encode() in err
                assert mine.read_bytes() == record + b'{"progress_id":"tor'
            theirs = split / "completed.jsonl"
            code, _, err = await batchpoll(
                [*run(sim, ids, "-o", str(theirs), "--resume")], tmp_path
            )
            assert code == 2, err
            assert b"--split-by-status directory of process" in err
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        # The other way round: a run has a status file as OUTPUT; a split run on its DIR waits.
        other = tmp_path / "other"
        other.mkdir()
        held = other / "failed.jsonl"
        second = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(held))]
        before = sim.stats.requests  # the first part's requests count too
        async with await anyio.open_process(second, env=_child_env(tmp_path)) as proc:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= before + 1)
            args = [
                *run(sim, ids, "-o", str(tmp_path / "b.jsonl")),
                "--split-by-status",
                str(other),
            ]
            code, _, err = await batchpoll(args, tmp_path)
            assert code == 2, err
            assert f"process {proc.pid}".encode() in err
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_or_overwrite_on_stdout_is_refused(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """--resume/--overwrite need a file to read back: with -o - they would write it all again."""
    ids = write_ids(tmp_path, ["cli-1"])
    assert "needs -o OUTPUT" in refused(capsys, ids, flag)


@pytest.mark.parametrize("target", ["output", "input"])
async def test_stderr_redirected_into_output_or_input_is_refused(
    tmp_path: Path, target: str
) -> None:
    """`2>> out.jsonl` or `2>> ids.txt`: logs would mix with the records, or be read back as
    ids for ever; exit 2, before any request, both files as they were."""
    ids = write_ids(tmp_path, ["cli-1", "cli-2"])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    async with running_simulator(SIM) as sim:
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(out))]
        with (out if target == "output" else ids).open("ab") as stderr:
            proc = await anyio.run_process(
                cmd, stderr=stderr, env=_child_env(tmp_path), check=False
            )
        assert sim.stats.requests == 0
    assert proc.returncode == 2
    # Not even the refusal is written there: it would be read back, or refused, next time.
    assert ids.read_bytes() == b"cli-1\ncli-2\n"
    assert out.read_bytes() == b""


async def test_an_id_holding_the_key_is_never_sent_and_resumes_once(tmp_path: Path) -> None:
    """A pasted id that holds the API key is invalid_input (masked), never sent, and a
    --resume finds its record again instead of writing another."""
    ids = tmp_path / "ids.txt"
    ids.write_text(f"cli-1\nmy-{KEY}-x\n{'y' * 295}{KEY}\n")
    out = tmp_path / "out.jsonl"
    async with running_simulator(SIM) as sim:
        for _ in range(2):
            code, _, err = await batchpoll([*run(sim, ids, "-o", str(out), "--resume")], tmp_path)
            assert code == 1, err
        polled = set(sim.stats.polls_by_id)
        assert polled == {"cli-1"}
    data = out.read_bytes()
    assert KEY[:6].encode() not in data
    got = lines(data)
    assert len(got) == 3
    invalid = sorted(str(r["progress_id"]) for r in got if r["status"] == "invalid_input")
    assert invalid[0] == "my-***-x"
    assert invalid[1] == "y" * 295 + "***"  # masked before it is cut at 300 characters


async def test_sigterm_during_a_long_rewrite_leaves_output_whole_and_no_temporary(
    tmp_path: Path,
) -> None:
    """SIGTERM while --resume rewrites a big OUTPUT (before polling starts): exit 143, OUTPUT
    as it was, no temporary file; one a SIGKILLed rewrite left is removed by the next run."""
    out = tmp_path / "big.jsonl"
    padding = "x" * 300
    out.write_bytes(
        b"".join(
            orjson.dumps({"progress_id": f"b-{i}", "status": "failed" if i % 2 else "completed",
                          "result": {"p": padding}}) + b"\n"
            for i in range(150_000)
        )
    )  # fmt: skip
    before = out.read_bytes()
    async with await anyio.open_process([sys.executable, "-c", "pass"]) as gone:
        await gone.wait()
    stale = tmp_path / f"big.jsonl.{gone.pid}.0.batchpoll-tmp"
    ids = write_ids(tmp_path, ["b-1", "b-2"])
    async with running_simulator(SIM) as sim:
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(out), "--resume")]
        cmd += ["--retry-statuses", "failed"]
        async with await anyio.open_process(cmd, env=_child_env(tmp_path)) as proc:
            with anyio.fail_after(20):
                # Nothing signals that the rewrite has begun but its file: look for it.
                while not leftovers(tmp_path):  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(5):
                assert await proc.wait() == 143
        assert sim.stats.requests == 0
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []
    # A temporary file of a process that is gone (as after SIGKILL) is the next run's to remove.
    stale.write_bytes(b"half")
    async with running_simulator(SIM) as sim:
        code, _, err = await batchpoll([*run(sim, ids, "-o", str(out), "--resume")], tmp_path)
    assert code in (0, 1), err
    assert leftovers(tmp_path) == []


async def test_records_and_logs_sent_to_one_file_by_the_user_are_allowed(tmp_path: Path) -> None:
    """`> all.txt 2>&1` with records on stdout: one stream by choice, as on a terminal."""
    ids = write_ids(tmp_path, ids_ending("completed", 2))
    both = tmp_path / "all.txt"
    async with running_simulator(SIM) as sim:
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "--log-format", "json")]
        with both.open("wb") as stream:
            proc = await anyio.run_process(
                cmd, stdout=stream, stderr=stream, env=_child_env(tmp_path), check=False
            )
    assert proc.returncode == 0
    assert sum(b'"status":"completed"' in line for line in both.read_bytes().splitlines()) == 2


async def test_reports_are_one_runs_too_and_a_refused_run_leaves_no_new_file(
    tmp_path: Path,
) -> None:
    """A running run's --summary is no other run's OUTPUT, and its OUTPUT no other run's
    --summary or --junit; a run refused for it creates no OUTPUT of its own."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(3)])
    summary, out = tmp_path / "S.json", tmp_path / "A.jsonl"
    async with running_simulator(slow) as sim:
        first = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(out))]
        first += ["--summary", str(summary)]
        async with await anyio.open_process(first, env=_child_env(tmp_path)) as proc:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= 1)
            code, _, err = await batchpoll([*run(sim, ids, "-o", str(summary))], tmp_path)
            assert code == 2, err
            assert f"process {proc.pid}".encode() in err
            fresh = tmp_path / "fresh.jsonl"
            for flag in ("--summary", "--junit"):
                args = [*run(sim, ids, "-o", str(fresh)), flag, str(out)]
                code, _, err = await batchpoll(args, tmp_path)
                assert code == 2, err
                assert f"process {proc.pid}".encode() in err
                assert not fresh.exists()
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    assert json.loads(summary.read_bytes())["exit_code"] == 143


async def test_stderr_into_a_running_runs_output_is_refused(tmp_path: Path) -> None:
    """A second run whose stderr goes into a running run's OUTPUT (2>> its.jsonl) exits 2
    and writes nothing there, so the first run's file stays all records."""
    slow = SimSettings(seed=11, api_key=KEY, min_polls=50, max_polls=60, latency=0.05)
    ids = write_ids(tmp_path, [f"cli-{i}" for i in range(3)])
    theirs = tmp_path / "theirs.jsonl"
    async with running_simulator(slow) as sim:
        first = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(theirs))]
        async with await anyio.open_process(first, env=_child_env(tmp_path)) as proc:
            with anyio.fail_after(20):
                await sim.wait_until(lambda st: st.requests >= 1)
            second = [sys.executable, "-m", "batchpoll", *run(sim, ids)]
            second += ["-o", str(tmp_path / "mine.jsonl")]
            with theirs.open("ab") as stderr:
                done = await anyio.run_process(
                    second, stderr=stderr, env=_child_env(tmp_path), check=False
                )
            assert done.returncode == 2
            assert theirs.read_bytes() == b""
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


def test_resume_and_overwrite_together_are_refused(
    tmp_path: Path, refused: Refusal, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume with --overwrite contradict each other: exit 2 rather than one winning."""
    ids = write_ids(tmp_path, ["cli-1"])
    err = refused(capsys, ids, "-o", str(tmp_path / "o.jsonl"), "--resume", "--overwrite")
    assert "give one of them" in err


async def test_a_signal_while_the_reports_are_written_waits_for_them(tmp_path: Path) -> None:
    """SIGTERM once the run is over and its reports are being written: they are finished
    whole (JUnit too), the summary says 143, and the exit is 143."""
    out = tmp_path / "done.jsonl"
    out.write_bytes(
        b"".join(
            orjson.dumps({"progress_id": f"d-{i}", "status": "completed", "elapsed_s": 1.0}) + b"\n"
            for i in range(60_000)
        )
    )
    ids = write_ids(tmp_path, ["d-1"])
    summary, junit = tmp_path / "s.json", tmp_path / "j.xml"
    async with running_simulator(SIM) as sim:
        cmd = [sys.executable, "-m", "batchpoll", *run(sim, ids, "-o", str(out), "--resume")]
        cmd += ["--summary", str(summary), "--junit", str(junit), "--log-format", "json"]
        async with await anyio.open_process(cmd, env=_child_env(tmp_path)) as proc:
            assert proc.stderr is not None
            seen = b""
            with anyio.fail_after(20):
                while b'"run_finished"' not in seen:
                    seen += await proc.stderr.receive()
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                assert await proc.wait() == 143
    assert json.loads(summary.read_bytes())["exit_code"] == 143
    assert junit.read_bytes().rstrip().endswith(b"</testsuites>")
