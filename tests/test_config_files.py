"""Config files are input too: bounded, regular files only, a BOM accepted, nothing secret or
unbounded echoed, the Cekura CLI's file read only when needed, and settings that do nothing said."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from helpers import KEY
from test_config import load

from batchpoll._core.apikey import CekuraFile, KeyFile
from batchpoll._core.config import file_layer, given_layer, resolve, settle
from batchpoll._io.configfiles import MAX_CONFIG_BYTES, load_settings
from batchpoll.errors import ConfigError


def _cekura(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / ".cekura"
    folder.mkdir(exist_ok=True)
    path = folder / "config.toml"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("toml", "secret"),
    [
        (f'[cekura]\napi_key = "{KEY}"\n', KEY),
        ('rate_store = {url = "redis://:hunter2pw@h"}\n', "hunter2pw"),
        (f'shards = [["{KEY}"]]\n', KEY),
        (f'fail_on = [{{k = "{KEY}"}}]\n', KEY),
    ],
    ids=["table-with-key", "inline-table-password", "nested-array", "table-in-known-key"],
)
def test_a_table_or_array_is_never_echoed_whole(tmp_path: Path, toml: str, secret: str) -> None:
    """An error about a table or an array names its shape, never what it holds."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml=toml)
    assert secret not in str(caught.value)


def test_a_huge_key_name_gives_a_short_error(tmp_path: Path) -> None:
    """A 1 MB key name (under the file cap) is cut in the message, not repeated whole."""
    name = "k" * 900_000
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml=f"{name} = 1\n")
    assert len(str(caught.value)) < 1000


def test_a_config_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    """A settings file larger than MAX_CONFIG_BYTES is refused before it is parsed."""
    with pytest.raises(ConfigError, match="larger than"):
        load(tmp_path, toml="# x\n" * (MAX_CONFIG_BYTES // 4 + 1))


@pytest.mark.parametrize("first", ["api_key", "api_url"])
def test_a_cekura_file_with_a_bom_keeps_its_first_key(tmp_path: Path, first: str) -> None:
    """~/.cekura/config.toml written with a UTF-8 BOM: its first line still counts."""
    lines = {"api_key": f'api_key = "{KEY}"', "api_url": 'api_url = "https://eu.example.test"'}
    rest = [v for k, v in lines.items() if k != first]
    _cekura(tmp_path, ("\ufeff" + "\n".join([lines[first], *rest]) + "\n").encode())
    settings = load(tmp_path, require_key=True)
    assert settings.api_key is not None
    assert settings.api_key.reveal() == KEY
    assert settings.base_url == "https://eu.example.test"


@pytest.mark.parametrize("where", ["cekura", "config", "key-file"])
def test_a_symlink_to_dev_zero_is_refused_not_read(tmp_path: Path, where: str) -> None:
    """A settings or key file that is a link to /dev/zero is not a regular file: a
    ConfigError at once, not a read until memory runs out."""
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    if where == "cekura":
        (tmp_path / ".cekura").mkdir()
        (tmp_path / ".cekura" / "config.toml").symlink_to("/dev/zero")
    config = str(link) if where == "config" else None
    key_file = str(link) if where == "key-file" else None
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings({}, {}, config, key_file, home=tmp_path, require_key=True)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["cekura", "config"])
async def test_a_fifo_as_a_settings_file_does_not_hang(tmp_path: Path, where: str) -> None:
    """A FIFO where a settings file goes (nobody writing to it): exit 2 at once, no hang."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["config"]
    if where == "cekura":
        (tmp_path / ".cekura").mkdir()
        os.mkfifo(tmp_path / ".cekura" / "config.toml")
    else:
        args += ["--config", str(fifo)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    with anyio.fail_after(10):
        proc = await anyio.run_process(
            [sys.executable, "-m", "batchpoll", *args],
            env=env | {"HOME": str(tmp_path)},
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert b"not a regular file" in proc.stderr


def test_the_cekura_file_is_not_read_when_nothing_needs_it(tmp_path: Path) -> None:
    """With the key in CEKURA_API_KEY and --base-url given, ~/.cekura/config.toml is never
    opened (an unreadable one is no error); without --base-url it is read for api_url."""
    (tmp_path / ".cekura").mkdir()
    (tmp_path / ".cekura" / "config.toml").mkdir()  # opened, this is "not a regular file"
    env = {"CEKURA_API_KEY": KEY}
    settings = load(tmp_path, env=env, flags={"base_url": "https://h.test"}, require_key=True)
    assert settings.api_key is not None
    with pytest.raises(ConfigError, match="not a regular file"):
        load(tmp_path, env=env, require_key=True)


def test_settings_that_would_do_nothing_are_warned_about(tmp_path: Path) -> None:
    """--retry-statuses without --resume, and JOB_COMPLETION_INDEX without BATCHPOLL_SHARDS,
    each give a warning instead of silently doing nothing."""
    settings = load(tmp_path, flags={"retry_statuses": "error"}, env={"JOB_COMPLETION_INDEX": "3"})
    assert any("retry_statuses" in w and "--resume" in w for w in settings.warnings)
    assert any("JOB_COMPLETION_INDEX" in w and "BATCHPOLL_SHARDS" in w for w in settings.warnings)
    quiet = load(
        tmp_path,
        flags={"retry_statuses": "error", "resume": True},
        env={"JOB_COMPLETION_INDEX": "3", "BATCHPOLL_SHARDS": "4"},
    )
    assert not any("retry_statuses" in w or "JOB_COMPLETION_INDEX" in w for w in quiet.warnings)


def test_the_merge_takes_layers_already_read() -> None:
    """The pure merge names a key file without opening it, and takes a file's values as a
    mapping: the same precedence and sources as load_settings."""
    given = given_layer({"rate": "5"}, "/nowhere/key")
    resolved = resolve(given, {"BATCHPOLL_BURST": "3"}, {"rate": 1.0, "burst": 2}, "file f.toml")
    assert resolved.wants_cekura_file({})  # base_url still at its default
    settings, key = settle(resolved, {}, CekuraFile({}))
    assert (settings.rate, settings.burst) == (5.0, 3)
    assert (settings.sources["rate"], settings.sources["burst"]) == (
        "flag --rate",
        "env BATCHPOLL_BURST",
    )
    assert key == KeyFile("/nowhere/key", "flag --api-key-file")
    assert file_layer({"max-retries": 4}, "file f.toml") == {"max_retries": 4}
