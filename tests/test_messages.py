"""Error messages: the key, key-shaped words and long values never come back whole."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from batchpoll._cli.main import MAX_MESSAGE_CHARS, main, safe_message
from batchpoll._core.redact import HIDDEN

pytestmark = pytest.mark.anyio

KEY = "sk_live_SECRETKEY123456"
OTHER = "sk_test_OTHERSECRET98765"  # key-shaped, but not the key this run knows
LONG = "L" * 5000
UNREACHABLE = ["--base-url", "http://127.0.0.1:9"]  # loopback; these runs end before a request


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (f"cannot open output /nonexist/{KEY}: gone", "cannot open output /nonexist/***: gone"),
        (f"unknown status {KEY.lower()}", "unknown status ***"),
        (f"output {KEY.upper()} is not empty.", "output *** is not empty."),
        (f"cannot read /a/{OTHER}.", f"cannot read /a/{HIDDEN}."),
        (f"cannot read {OTHER}/", f"cannot read {HIDDEN}/"),
        (f"status='{OTHER}'", f"status='{HIDDEN}'"),
        (f"x={OTHER}.", f"x={HIDDEN}."),
    ],
    ids=["key-in-path", "key-lowercased", "key-uppercased", "other-key-in-path", "trailing-slash",
         "quoted", "full-stop"],
)  # fmt: skip
def test_the_key_and_key_shaped_words_are_masked(message: str, expected: str) -> None:
    """The known key in any case becomes ***, any other key-shaped word the hidden marker."""
    assert safe_message(message, [KEY]) == expected


ORDINARY = [
    "cannot write results-20240101T000000.jsonl: No space left on device",
    "OUTPUT is held by pid 123456789012 (lock on out.jsonl)",
    "rate='0.5' (from env BATCHPOLL_RATE): must be between 0.001 and 1000000 requests/s",
    "see batchpoll --help; did you mean --max-interval?",
    "rate_store='redis://:***@127.0.0.1:6379/0' (from flag --rate-store): refused",
    "shard='3/3' (from env JOB_COMPLETION_INDEX/BATCHPOLL_SHARDS): must be below",
    "unknown key (from file /tmp/pytest-118/test_exit_2_on_unknown_config_0/c.toml)",
    "cannot open output /builds/job_12345_artifacts/run_7/out: Permission denied",
    f"value='{'a' * 100}...[5000 characters in all]' cut by shown already",
]


@pytest.mark.parametrize("message", ORDINARY)
def test_ordinary_messages_pass_unchanged(message: str) -> None:
    """Words, numbers, pids, dotted file names, URLs and shown()'s own cuts are left alone."""
    assert safe_message(message, [KEY]) == message


def test_every_long_run_is_cut_with_its_length() -> None:
    """A run over 100 non-space characters keeps 100 and says its length; the rest stays."""
    message = safe_message(f"cannot open output /x/{LONG} and /y/{LONG} too long", [])
    assert LONG[:101] not in message
    assert message.count("...[5003 characters in all]") == 2
    assert message.startswith("cannot open output /x/L")
    assert message.endswith(" and /y/" + "L" * 97 + "...[5003 characters in all] too long")


def test_a_long_message_of_short_words_is_cut_too() -> None:
    """Thousands of short words stop at MAX_MESSAGE_CHARS, with the length told."""
    message = safe_message("x " * 5000, [])
    assert len(message) < MAX_MESSAGE_CHARS + 40
    assert message.endswith("...[10000 characters in all]")


def test_a_key_too_short_to_be_one_is_not_masked() -> None:
    """A key under MIN_KEY_CHARS (never loaded: too short) masks no ordinary text."""
    assert safe_message("cannot read input ids.txt", ["ids"]) == "cannot read input ids.txt"


def test_a_huge_shard_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--shard 1/<30 digits> exits 2 saying N is bounded, instead of polling nothing."""
    assert main(["config", "--shard", "1/" + "9" * 30]) == 2
    assert "N must be at most 100000 shards" in capsys.readouterr().err


async def child(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """``python -m batchpoll ARGS`` in *cwd* (also HOME); exit code and stdout + stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    base |= {"HOME": str(cwd), "CEKURA_API_KEY": KEY, **(env or {})}
    base = {k: v for k, v in base.items() if v != ""}
    with anyio.fail_after(30):  # a regression that starts serving or polling still ends
        proc = await anyio.run_process(
            [sys.executable, "-m", "batchpoll", *args], env=base, cwd=cwd, check=False
        )
    return proc.returncode, proc.stdout + proc.stderr


def foreign_file(tmp_path: Path, name: str) -> None:
    """A non-empty file batchpoll did not write, in the way of a run."""
    (tmp_path / name).write_text("not a batchpoll file\n")


# Each case: argv, env, the file in the way (or None). The key is typed where a path goes.
KEY_CASES: dict[str, tuple[list[str], dict[str, str], str | None]] = {
    "output-missing-dir": (["run", "ids.txt", "-o", f"/nonexist/{KEY}"], {}, None),
    "output-not-empty": (["run", "ids.txt", "-o", KEY], {}, KEY),
    "summary": (["run", "ids.txt", "-o", "out.jsonl", "--summary", KEY], {}, KEY),
    "junit": (["run", "ids.txt", "-o", "out.jsonl", "--junit", KEY], {}, KEY),
    "split-by-status": (["run", "ids.txt", "-o", "out.jsonl", "--split-by-status", KEY], {}, KEY),
    "report": (["report", KEY], {}, None),
    "simulate-key-file": (["simulate", "--port", "0", "--api-key-file", KEY], {}, None),
    "env-output": (["run", "ids.txt"], {"BATCHPOLL_OUTPUT": f"/x/{KEY}"}, None),
    "other-key-shaped": (["run", "ids.txt", "-o", f"/nonexist/{OTHER}"], {}, None),
}


@pytest.mark.parametrize(("argv", "env", "in_the_way"), KEY_CASES.values(), ids=KEY_CASES.keys())
async def test_a_key_typed_as_a_path_is_never_echoed(
    tmp_path: Path, argv: list[str], env: dict[str, str], in_the_way: str | None
) -> None:
    """Each path option given the key exits 2 with a message that masks it."""
    (tmp_path / "ids.txt").write_text("a\n")
    if in_the_way is not None:
        foreign_file(tmp_path, in_the_way)
    code, output = await child([*argv, *UNREACHABLE] if argv[0] == "run" else argv, tmp_path, env)
    assert code == 2, output
    assert b"batchpoll: error: " in output
    assert KEY.encode() not in output
    assert KEY.lower().encode() not in output.lower()
    assert OTHER.encode() not in output
    assert b"Traceback" not in output


LONG_CASES: dict[str, list[str]] = {
    "output": ["run", "ids.txt", *UNREACHABLE, "-o", f"/x/{LONG}"],
    "config": ["run", "ids.txt", *UNREACHABLE, "--config", f"/x/{LONG}"],
    "report": ["report", f"/x/{LONG}"],
    "simulate-key-file": ["simulate", "--port", "0", "--api-key-file", f"/x/{LONG}"],
    "simulate-host": ["simulate", "--port", "0", "--host", LONG],
    "simulate-redirect-url": ["simulate", "--port", "0", "--redirect-url", f"http://{LONG}"],
    "simulate-retry-after": ["simulate", "--port", "0", "--retry-after", LONG],
    "simulate-retry-after-list": ["simulate", "--port", "0", "--retry-after", "x," * 2500 + "x"],
    "demo-dir": ["demo", "--dir", f"/x/{LONG}"],
}


@pytest.mark.parametrize("argv", LONG_CASES.values(), ids=LONG_CASES.keys())
async def test_a_long_value_never_comes_back_whole(tmp_path: Path, argv: list[str]) -> None:
    """A 5,000-character path or value exits 2 with a message of bounded length."""
    (tmp_path / "ids.txt").write_text("a\n")
    code, output = await child(argv, tmp_path)
    assert code == 2, output[:500]
    assert b"L" * 101 not in output
    assert len(output) < 1000, len(output)
    assert b"Traceback" not in output


async def test_the_key_of_an_api_key_file_is_masked_with_no_env_key(tmp_path: Path) -> None:
    """The key the run loaded from --api-key-file is masked even when it is not key-shaped."""
    plain = "correcthorsebatterystaple"  # no digit: only knowing the key can mask it
    (tmp_path / "key.txt").write_text(plain + "\n")
    (tmp_path / "ids.txt").write_text("a\n")
    argv = ["run", "ids.txt", *UNREACHABLE, "--api-key-file", "key.txt", "-o", f"/x/{plain}"]
    code, output = await child(argv, tmp_path, {"CEKURA_API_KEY": ""})
    assert code == 2, output
    assert b"cannot open output /x/***" in output
    assert plain.encode() not in output


DEMO_DIRS = {"a-file": "somefile", "under-a-file": "somefile/sub"}


@pytest.mark.parametrize("directory", DEMO_DIRS.values(), ids=DEMO_DIRS.keys())
async def test_demo_dir_that_cannot_be_made_exits_2(tmp_path: Path, directory: str) -> None:
    """`demo --dir` on a file, or under one, exits 2 with a clear message, no traceback."""
    foreign_file(tmp_path, "somefile")
    code, output = await child(["demo", "--ids", "10", "--dir", directory], tmp_path)
    assert code == 2, output
    assert f"batchpoll: error: --dir {directory}: cannot make the directory".encode() in output
    assert b"Traceback" not in output
