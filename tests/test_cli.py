"""The real command line in a subprocess against the in-process simulator: exit codes and files."""

from __future__ import annotations

import gc
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from subprocess import PIPE
from typing import Any

import orjson
import pytest
from helpers import KEY

from batchpoll._cli.run import GC_GEN0_THRESHOLD, collector_tuned
from batchpoll.records import DEFAULT_FAIL_ON
from batchpoll.simulator import SimSettings, Simulator, running_simulator, truth

pytestmark = pytest.mark.anyio

SIM = SimSettings(seed=11, api_key=KEY, min_polls=1, max_polls=2)
FAST = ["--interval", "0.01", "--max-interval", "0.05", "--rate", "500", "--burst", "20"]


def ids_ending(status: str, n: int, prefix: str = "cli") -> list[str]:
    """The first *n* ids whose simulated fate is *status*."""
    out = [pid for i in range(2000) if truth(pid := f"{prefix}-{i}", SIM)[0] == status]
    return out[:n]


async def batchpoll(
    args: Sequence[str],
    tmp_path: Path,
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``python -m batchpoll ARGS``; return (exit code, stdout, stderr)."""
    import anyio

    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    base |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
    base |= dict(env or {})
    base = {k: v for k, v in base.items() if v != ""}
    proc = await anyio.run_process(
        [sys.executable, "-m", "batchpoll", *args], input=stdin, env=base, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def write_ids(tmp_path: Path, ids: Sequence[str]) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def lines(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in data.splitlines()]


def run_args(sim: Simulator, ids: Path, *extra: str) -> list[str]:
    return ["run", str(ids), "--base-url", sim.url, *FAST, *extra]


async def test_exit_0_when_nothing_ends_in_fail_on(tmp_path: Path) -> None:
    """All ids completed: one JSON line each on stdout and exit code 0."""
    ids = ids_ending("completed", 20)
    async with running_simulator(SIM) as sim:
        code, out, err = await batchpoll(run_args(sim, write_ids(tmp_path, ids)), tmp_path)
    assert code == 0, err
    records = lines(out)
    assert sorted(r["progress_id"] for r in records) == sorted(ids)
    assert {r["status"] for r in records} == {"completed"}


async def test_exit_1_when_an_id_fails_and_0_with_fail_on_none(tmp_path: Path) -> None:
    """A failed id makes the exit code 1; --fail-on none makes it 0 again."""
    ids = ids_ending("completed", 5) + ids_ending("failed", 1)
    async with running_simulator(SIM) as sim:
        path = write_ids(tmp_path, ids)
        code, out, _ = await batchpoll(run_args(sim, path), tmp_path)
        code_none, _, _ = await batchpoll(run_args(sim, path, "--fail-on", "none"), tmp_path)
    assert code == 1
    assert len(lines(out)) == 6
    assert code_none == 0


async def test_exit_3_on_a_refused_key_without_showing_it(tmp_path: Path) -> None:
    """A wrong key stops the run with exit 3, saying where the key came from but not the key."""
    wrong = "wrong-key-93af"
    async with running_simulator(SIM) as sim:
        code, out, err = await batchpoll(
            run_args(sim, write_ids(tmp_path, ["a", "b"])), tmp_path, env={"CEKURA_API_KEY": wrong}
        )
    assert code == 3
    assert b"env CEKURA_API_KEY" in err
    assert wrong.encode() not in err + out
    assert out == b""


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--rate", "-1"], {}, b"rate='-1' (from flag --rate): must be between 0.001 and 1000000"),
        (["--concurrency", "0"], {}, b"concurrency='0' (from flag --concurrency)"),
        ([], {"BATCHPOLL_INTERVAL": "soon"}, b"env BATCHPOLL_INTERVAL"),
        ([], {"CEKURA_API_KEY": ""}, b"CEKURA_API_KEY"),
        (["--log-format", "xml"], {}, b"log_format"),
    ],
    ids=["negative-rate", "zero-concurrency", "env-not-a-number", "no-key", "bad-log-format"],
)
async def test_exit_2_on_bad_settings(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: bytes
) -> None:
    """A bad setting exits 2 with a message naming it and its source, and no traceback."""
    ids = write_ids(tmp_path, ["a"])
    code, out, err = await batchpoll(
        ["run", str(ids), "--base-url", "http://127.0.0.1:9", *args], tmp_path, env=env
    )
    assert code == 2
    assert needle in err
    assert b"Traceback" not in err
    assert out == b""


async def test_exit_2_on_unknown_config_key(tmp_path: Path) -> None:
    """An unknown key in --config exits 2, naming the key and the file."""
    config = tmp_path / "c.toml"
    config.write_text("rate = 5\nconcurency = 3\n")
    code, _, err = await batchpoll(
        ["run", str(write_ids(tmp_path, ["a"])), "--config", str(config)], tmp_path
    )
    assert code == 2
    assert b"concurency" in err
    assert str(config).encode() in err


async def test_exit_2_on_missing_input_file(tmp_path: Path) -> None:
    """An input file that does not exist exits 2 with its name."""
    code, _, err = await batchpoll(["run", str(tmp_path / "nope.txt")], tmp_path)
    assert code == 2
    assert b"nope.txt" in err
    assert b"Traceback" not in err


async def test_exit_2_on_usage_error(tmp_path: Path) -> None:
    """An unknown flag is a usage error: exit 2."""
    code, _, err = await batchpoll(["run", "x", "--no-such-flag"], tmp_path)
    assert code == 2
    assert b"--no-such-flag" in err


async def test_stdin_input_output_file_and_summary(tmp_path: Path) -> None:
    """Ids from stdin go to -o FILE, and --summary writes the run's counts as JSON."""
    ids = [*ids_ending("completed", 10), "notfound-1", "bad id"]
    out_path, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    async with running_simulator(SIM) as sim:
        code, out, err = await batchpoll(
            [
                "run",
                "-",
                "-o",
                str(out_path),
                "--summary",
                str(summary_path),
                "--base-url",
                sim.url,
                *FAST,
            ],
            tmp_path,
            stdin="\n".join(ids).encode(),
        )
    assert code == 1, err  # not_found and invalid_input are in the default --fail-on
    assert out == b""
    records = lines(out_path.read_bytes())
    assert len(records) == 12
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["by_status"] == {"completed": 10, "not_found": 1, "invalid_input": 1}
    assert summary["exit_code"] == 1


async def test_logs_are_json_on_a_pipe_with_the_key_masked(tmp_path: Path) -> None:
    """On a non-terminal stderr the logs are JSON lines: a start event and a final summary."""
    async with running_simulator(SIM) as sim:
        code, _, err = await batchpoll(
            run_args(sim, write_ids(tmp_path, ids_ending("completed", 3)), "--log-level", "debug"),
            tmp_path,
        )
    assert code == 0
    events = {e["event"]: e for e in lines(err)}
    assert events["run_started"]["api_key"] == "***"
    assert events["run_started"]["api_key_source"] == "env CEKURA_API_KEY"
    assert events["run_finished"]["by_status"] == {"completed": 3}
    assert KEY.encode() not in err


async def test_non_empty_output_is_refused_without_resume(tmp_path: Path) -> None:
    """An OUTPUT that holds records is never replaced silently: exit 2 naming both ways out."""
    out_path = tmp_path / "out.jsonl"
    out_path.write_text('{"progress_id": "x", "status": "completed"}\n')
    code, _, err = await batchpoll(
        ["run", str(write_ids(tmp_path, ["a"])), "-o", str(out_path)], tmp_path
    )
    assert code == 2
    assert b"--resume" in err
    assert b"--overwrite" in err
    assert out_path.read_text() == '{"progress_id": "x", "status": "completed"}\n'


async def test_resume_cuts_a_torn_line_and_polls_only_the_rest(tmp_path: Path) -> None:
    """--resume keeps whole records, cuts a torn last line, and ends with one record per id."""
    ids = ids_ending("completed", 6)
    out_path = tmp_path / "out.jsonl"
    async with running_simulator(SIM) as sim:
        path = write_ids(tmp_path, ids[:3])
        code, _, _ = await batchpoll(run_args(sim, path, "-o", str(out_path)), tmp_path)
        assert code == 0
        with out_path.open("ab") as f:
            f.write(b'{"progress_id": "' + ids[3].encode() + b'", "sta')  # killed mid-write
        polled_before = dict(sim.stats.polls_by_id)
        path = write_ids(tmp_path, ids)
        code, _, err = await batchpoll(
            run_args(sim, path, "-o", str(out_path), "--resume"), tmp_path
        )
    assert code == 0, err
    records = lines(out_path.read_bytes())
    assert sorted(r["progress_id"] for r in records) == sorted(ids)
    assert all(sim.stats.polls_by_id[pid] == polled_before[pid] for pid in ids[:3])


async def test_the_key_appears_nowhere_at_debug_level(tmp_path: Path) -> None:
    """At --log-level debug, with failures of every kind, the key is in no byte of any output."""
    ids = [*ids_ending("completed", 3), "flaky-1", "notfound-1", "reject-1", "bad id"]
    out_path, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    async with running_simulator(SIM) as sim:
        files = ["-o", str(out_path), "--summary", str(summary_path)]
        debug = ["--log-level", "debug", "--max-retries", "2"]
        code, out, err = await batchpoll(
            run_args(sim, write_ids(tmp_path, ids), *debug, *files), tmp_path
        )
        # and once more to stdout, refused by the server: the message names the source only
        refused = await batchpoll(
            run_args(sim, write_ids(tmp_path, ids), "--log-level", "debug"),
            tmp_path,
            env={"CEKURA_API_KEY": "not-" + KEY},
        )
    assert code == 1
    assert refused[0] == 3
    everything = out + err + out_path.read_bytes() + summary_path.read_bytes()
    everything += refused[1] + refused[2]
    assert b"poll_failed" in err  # debug events were on
    assert everything.count(KEY.encode()) == 0


async def test_report_counts_equal_the_runs_own_summary(tmp_path: Path) -> None:
    """`batchpoll report OUTPUT --json` gives the same counts as the run's --summary."""
    ids = [f"rep-{i}" for i in range(60)] + ["notfound-1", "reject-1", "bad id"]
    out_path, summary_path = tmp_path / "out.jsonl.gz", tmp_path / "summary.json"
    async with running_simulator(SIM) as sim:
        code, _, err = await batchpoll(
            run_args(
                sim, write_ids(tmp_path, ids), "-o", str(out_path), "--summary", str(summary_path)
            ),
            tmp_path,
        )
    report_code, report_out, _ = await batchpoll(["report", str(out_path), "--json"], tmp_path)
    run_summary, report = orjson.loads(summary_path.read_bytes()), orjson.loads(report_out)
    assert code == report_code == 1, err
    assert report["by_status"] == run_summary["by_status"]
    assert sum(report["by_status"].values()) == len(ids)
    assert report["failed_count"] == run_summary["failed_count"] >= 3
    text_code, text, _ = await batchpoll(["report", str(out_path)], tmp_path)
    assert text_code == 1
    assert b"notfound-1" in text
    assert b"reject-1" in text


async def test_junit_failures_equal_the_fail_on_records(tmp_path: Path) -> None:
    """The JUnit file parses, and its failures are exactly the records in --fail-on."""
    import xml.etree.ElementTree as ET

    ids = [f"ju-{i}" for i in range(60)] + ["notfound-1", "flaky-1"]
    out_path, junit_path = tmp_path / "out.jsonl", tmp_path / "junit.xml"
    async with running_simulator(SIM) as sim:
        files = ["-o", str(out_path), "--junit", str(junit_path)]
        code, _, err = await batchpoll(
            run_args(sim, write_ids(tmp_path, ids), "--max-retries", "2", *files), tmp_path
        )
    assert code == 1, err
    failing = [r for r in lines(out_path.read_bytes()) if r["status"] in DEFAULT_FAIL_ON]
    suite = ET.parse(junit_path).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(ids)
    failed_names = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed_names == {r["progress_id"] for r in failing}
    assert int(suite.get("failures", "-1")) == len(failing)


async def test_split_by_status_holds_one_record_per_id_across_a_resume(tmp_path: Path) -> None:
    """--split-by-status files hold each record once, also after --resume."""
    ids = [f"sp-{i}" for i in range(30)]
    out_path, folder = tmp_path / "out.jsonl", tmp_path / "by"
    async with running_simulator(SIM) as sim:
        for part, extra in ((ids[:10], []), (ids, ["--resume"])):
            await batchpoll(
                run_args(
                    sim,
                    write_ids(tmp_path, part),
                    "-o",
                    str(out_path),
                    "--split-by-status",
                    str(folder),
                    *extra,
                ),
                tmp_path,
            )
    split = [r for f in folder.glob("*.jsonl") for r in lines(f.read_bytes())]
    assert sorted(r["progress_id"] for r in split) == sorted(ids)
    assert all(f.stem == r["status"] for f in folder.glob("*.jsonl") for r in lines(f.read_bytes()))


async def test_config_command_shows_values_and_sources_never_the_key(tmp_path: Path) -> None:
    """`batchpoll config` prints each setting with its source, and the key masked."""
    code, out, err = await batchpoll(
        ["config", "--rate", "7"], tmp_path, env={"BATCHPOLL_BURST": "3"}
    )
    assert code == 0, err
    text = out.decode()
    assert re.search(r"^rate\s+= 7\.0\s+# flag --rate$", text, re.M)
    assert re.search(r"^burst\s+= 3\s+# env BATCHPOLL_BURST$", text, re.M)
    assert re.search(r"^concurrency\s+= 32\s+# default$", text, re.M)
    assert "*** (env CEKURA_API_KEY)" in text
    assert KEY not in text


@pytest.mark.parametrize(
    "loop", ["asyncio", "default"], ids=["plain-asyncio", "uvloop-if-installed"]
)
async def test_runs_on_the_plain_asyncio_loop_and_on_uvloop(tmp_path: Path, loop: str) -> None:
    """The same run ends the same way on the plain asyncio loop and on uvloop."""
    ids = ids_ending("completed", 5) + ids_ending("failed", 2)
    async with running_simulator(SIM) as sim:
        code, out, err = await batchpoll(
            run_args(sim, write_ids(tmp_path, ids)), tmp_path, env={"BATCHPOLL_LOOP": loop}
        )
    assert code == 1, err
    assert sorted(r["status"] for r in lines(out)) == ["completed"] * 5 + ["failed"] * 2


def test_a_run_raises_the_collector_threshold_and_restores_it() -> None:
    """During a run the cyclic GC starts less often; afterwards the host's settings are back."""
    before = gc.get_threshold()
    during: list[tuple[int, ...]] = []

    def failing_run() -> None:
        with collector_tuned():
            during.append(gc.get_threshold())
            raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError):
        failing_run()
    assert during[0][0] >= GC_GEN0_THRESHOLD
    assert during[0][1:] == before[1:]
    assert gc.get_threshold() == before


SECRET = "sk_live_9f3c2a7b51d04e68"

# Each way a careless user can hand argparse a secret; none may echo it.
LEAKS = {
    "api-key-flag": (["run", "ids.txt", "--api-key", SECRET], "CEKURA_API_KEY"),
    "api-key-equals": (["config", f"--api-key={SECRET}"], "--api-key-file PATH"),
    "api-key-on-simulate": (["simulate", "--api-key", SECRET], "~/.cekura/config.toml"),
    "api-key-before-input": (["run", "--api-key", SECRET, "ids.txt"], "CEKURA_API_KEY"),
    "near-miss": (["run", "ids.txt", "--apikey-file", SECRET], "did you mean --api-key-file?"),
    "near-miss-equals": (["run", "ids.txt", f"--rat={SECRET}"], "did you mean --rate?"),
    "extra-argument": (["run", "ids.txt", SECRET], "1 unexpected argument"),
    "bad-command": ([SECRET, "ids.txt"], "unknown command"),
    "close-command": (["rnu", SECRET], "did you mean run?"),
    "bad-int": (["demo", "--ids", SECRET], "argument --ids: not a valid int"),
    "bad-int-equals": (["simulate", f"--port={SECRET}"], "argument --port: not a valid int"),
    "value-to-a-switch": (["run", "ids.txt", f"--resume={SECRET}"], "--resume: takes no value"),
    "before-command": ([f"--token={SECRET}", "run", "ids.txt"], "no API key on the command line"),
    "bad-setting": (["run", "ids.txt", "--rate", SECRET], "rate='<hidden"),
}


@pytest.mark.parametrize(("argv", "needle"), LEAKS.values(), ids=LEAKS.keys())
def test_no_usage_error_echoes_what_was_typed(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every usage error exits 2 naming the option, never the value typed after it."""
    from batchpoll._cli.main import main

    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert needle in err
    assert "Traceback" not in err


def test_no_parser_completes_a_prefix() -> None:
    """Abbreviations are off for the top parser and every command's parser."""
    from batchpoll._cli.main import _parser

    parser = _parser(["simulate"])
    assert set(parser.commands) == {"run", "config", "report", "simulate", "demo"}
    assert all(not p.allow_abbrev for p in [parser, *parser.commands.values()])


async def test_api_key_flag_in_a_real_process_says_where_keys_go(tmp_path: Path) -> None:
    """`--api-key VALUE` exits 2 naming the places a key goes, without echoing it."""
    code, out, err = await batchpoll(["run", "-", "--api-key", SECRET], tmp_path, stdin=b"a\n")
    assert code == 2
    assert SECRET.encode() not in out + err
    assert b"set CEKURA_API_KEY, pass --api-key-file PATH" in err
    assert b"Traceback" not in err


async def test_help_still_works(tmp_path: Path) -> None:
    """`batchpoll --help` and `batchpoll run --help` print help and exit 0."""
    top, run = await batchpoll(["--help"], tmp_path), await batchpoll(["run", "--help"], tmp_path)
    assert (top[0], run[0]) == (0, 0)
    assert b"COMMAND" in top[1]
    assert b"--concurrency" in run[1]


async def test_config_warns_about_an_unknown_env_var_by_name(tmp_path: Path) -> None:
    """`batchpoll config` warns of BATCHPOLL_RAT with the near miss, never showing its value."""
    code, out, err = await batchpoll(["config"], tmp_path, env={"BATCHPOLL_RAT": SECRET})
    assert code == 0
    assert b"BATCHPOLL_RAT is not a batchpoll setting; did you mean BATCHPOLL_RATE?" in err
    assert SECRET.encode() not in out + err


async def run_child(
    args: Sequence[str],
    tmp_path: Path,
    preexec: Callable[[], None],
    env_extra: Mapping[str, str] | None = None,
    **streams: Any,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m batchpoll ARGS`` with *preexec* run in the child first (a limit, a close)."""
    import anyio

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY, **(env_extra or {})}
    cmd = [sys.executable, "-m", "batchpoll", *args]

    def start() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cmd, env=env, preexec_fn=preexec, timeout=30, check=False, **streams)

    with anyio.fail_after(40):
        return await anyio.to_thread.run_sync(start)


def limit_files(soft: int, hard: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return preexec


async def test_a_concurrency_the_files_limit_cannot_hold_fails_at_start(tmp_path: Path) -> None:
    """Under soft = hard = 64 open files, --concurrency 200 exits 2 before any request."""
    async with running_simulator(SIM) as sim:
        args = run_args(sim, write_ids(tmp_path, ["a", "b"]), "--concurrency", "200")
        result = await run_child(args, tmp_path, limit_files(64, 64), capture_output=True)
        assert sim.stats.requests == 0
    assert result.returncode == 2, result.stderr
    assert b"concurrency=200 (from flag --concurrency): needs up to 232 open files" in result.stderr
    assert b"(ulimit -n) is 64" in result.stderr


async def test_the_soft_files_limit_is_raised_when_the_hard_one_allows(tmp_path: Path) -> None:
    """Under soft 64 / hard 4096, --concurrency 200 raises the soft limit, logs it, and runs."""
    ids = ids_ending("completed", 5)
    async with running_simulator(SIM) as sim:
        args = run_args(sim, write_ids(tmp_path, ids), "--concurrency", "200")
        result = await run_child(args, tmp_path, limit_files(64, 4096), capture_output=True)
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 5
    raised = [e for e in lines(result.stderr) if e["event"] == "open_files_raised"]
    assert [(e["soft_before"], e["soft"]) for e in raised] == [(64, 4096)]


def close_fd(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


async def test_input_dash_with_stdin_closed_exits_2(tmp_path: Path) -> None:
    """`run - <&-`: exit 2 with a message on stderr, and no request sent."""
    async with running_simulator(SIM) as sim:
        args = ["run", "-", "-o", str(tmp_path / "out.jsonl"), "--base-url", sim.url]
        result = await run_child(args, tmp_path, close_fd(0), capture_output=False, stderr=PIPE)
        assert sim.stats.requests == 0
    assert result.returncode == 2
    assert b"INPUT is - but stdin is closed" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_output_dash_with_stdout_closed_exits_2(tmp_path: Path) -> None:
    """`run ids.txt -o - >&-`: exit 2 with a message on stderr, and no request sent."""
    async with running_simulator(SIM) as sim:
        args = run_args(sim, write_ids(tmp_path, ["a"]), "-o", "-")
        result = await run_child(args, tmp_path, close_fd(1), stderr=PIPE)
        assert sim.stats.requests == 0
    assert result.returncode == 2
    assert b"OUTPUT is - (stdout) but stdout is closed" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_a_run_with_stderr_closed_finishes_and_keeps_output_clean(tmp_path: Path) -> None:
    """`run ids.txt -o out.jsonl 2>&-`: exit 0, and OUTPUT holds only the records, no logs."""
    ids = ids_ending("completed", 5)
    out_path = tmp_path / "out.jsonl"
    async with running_simulator(SIM) as sim:
        args = run_args(sim, write_ids(tmp_path, ids), "-o", str(out_path), "--log-level", "debug")
        result = await run_child(args, tmp_path, close_fd(2), stdout=PIPE)
    assert result.returncode == 0
    assert result.stdout == b""
    records = lines(out_path.read_bytes())
    assert sorted(r["progress_id"] for r in records) == sorted(ids)
    assert all(set(r) >= {"progress_id", "status"} for r in records)


async def test_config_with_stderr_closed_keeps_warnings_off_stdout(tmp_path: Path) -> None:
    """`batchpoll config 2>&-`: a warning for stderr never falls back to stdout."""
    result = await run_child(
        ["config"], tmp_path, close_fd(2), stdout=PIPE, env_extra={"BATCHPOLL_RAT": "5"}
    )
    assert result.returncode == 0
    assert b"rate" in result.stdout
    assert b"warning" not in result.stdout
