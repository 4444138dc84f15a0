"""Settings from the outside world: the TOML file, ``~/.cekura/config.toml``, key files.

Reads what the layers hold and hands them to the pure merge (``_core.config``): flags as
given, the environment as a mapping (the caller's ``os.environ``, or a test's dict), files
read here, each small and bounded.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final

from .._core.apikey import CEKURA_FILE, CekuraFile, KeyFile, MissingApiKey, checked_key
from .._core.config import Settings, file_layer, given_layer, resolve, settle
from .._core.redact import HIDDEN, Secret, shown
from .._core.settings_table import KEY_FILE
from ..errors import ConfigError

#: The most a settings or key file may hold; anything larger is a mistake (a symlink to
#: /dev/zero, a log file), and reading it whole would take the memory.
MAX_CONFIG_BYTES: Final = 1 << 20
#: A key file holds one key: a few hundred bytes at most.
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


def load_settings(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    config_path: str | None,
    api_key_file: str | None,
    home: Path | None = None,
    require_key: bool = True,
) -> Settings:
    """Merge flag > env > file > default per key, validate, and find the API key.

    *flags* holds only the options the user gave, keyed by field name, typed or as strings
    (None counts as not given). Env names are ``BATCHPOLL_<NAME>``, plus ``CEKURA_API_URL``
    for base_url; an empty variable is unset. *home* stands for ``~`` (None: the user's).
    Raises ConfigError naming key, value and source; MissingApiKey (a ConfigError) when
    *require_key* and no key is found anywhere.
    """
    given = given_layer(flags, api_key_file)
    from_file = _read_config(config_path) if config_path is not None else {}
    resolved = resolve(given, env, from_file, f"file {config_path}")
    cekura = _read_cekura_file(home) if resolved.wants_cekura_file(env) else CekuraFile({})
    settings, key = settle(resolved, env, cekura)
    if isinstance(key, KeyFile):
        key = _read_key_file(key.path, key.source, home)
    if key is None:
        if require_key:
            raise MissingApiKey(oauth_only=cekura.oauth_only)
        return settings
    return replace(settings, api_key=key[0], api_key_source=key[1])


class _Unreadable(Exception):
    """A settings file that is there but is no text file to read; the message says why."""


def read_text_file(path: str | Path, *, cap: int = MAX_CONFIG_BYTES) -> str:
    """A small text file's contents: a regular file (links followed) of at most *cap* bytes,
    UTF-8 with or without a BOM.

    Opened without blocking, so a FIFO in its place cannot hang the start (it is refused as
    not a regular file). Raises ``OSError`` (cannot open), ``_Unreadable`` (not a regular
    file, too large) or ``UnicodeDecodeError``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable("is not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 64 * 1024):
            size += len(chunk)
            if size > cap:
                raise _Unreadable(f"is larger than {cap} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8-sig")


def _read_config(path: str) -> dict[str, object]:
    """The option values of a batchpoll TOML file, keyed by field name."""
    try:
        data = tomllib.loads(read_text_file(path))
    except OSError as exc:
        raise ConfigError(
            "config", shown(path), "flag --config", f"cannot read: {exc.strerror}"
        ) from None
    except _Unreadable as exc:
        raise ConfigError("config", shown(path), "flag --config", str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError("config", shown(path), "flag --config", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "config", shown(path), "flag --config", f"not valid TOML: {exc}"
        ) from None
    return file_layer(data, f"file {path}")


def _read_key_file(path: str, source: str, home: Path | None) -> tuple[Secret, str]:
    if path == "~" or path.startswith("~/"):
        path = str((home or Path.home()) / path[2:])
    name = shown(path)
    try:
        text = read_text_file(path, cap=_MAX_KEY_FILE_BYTES)
    except _Unreadable as exc:
        raise ConfigError(KEY_FILE, name, source, str(exc)) from None
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
        if name == HIDDEN:
            # The usual slip: the key itself given where its file's path goes.
            problem += (
                "; this looks like a key, and --api-key-file takes the PATH of a file holding one"
            )
        raise ConfigError(KEY_FILE, name, source, problem) from None
    except UnicodeDecodeError:
        raise ConfigError(KEY_FILE, name, source, "is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(KEY_FILE, name, source, "is empty")
    return checked_key(text, f"file {path}"), f"file {path}"


def _read_cekura_file(home: Path | None) -> CekuraFile:
    try:
        path = (home or Path.home()) / ".cekura" / "config.toml"
    except RuntimeError:  # no home directory to look in
        return CekuraFile({})
    try:
        text = read_text_file(path)
        mode = path.stat().st_mode
    except FileNotFoundError:
        return CekuraFile({})
    except _Unreadable as exc:
        raise ConfigError("api_key", None, CEKURA_FILE, str(exc)) from None
    except OSError as exc:
        raise ConfigError("api_key", None, CEKURA_FILE, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("api_key", None, CEKURA_FILE, "is not UTF-8 text") from None
    try:
        values: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # The official CLI writes flat `key = "value"` lines that strict TOML may reject
        # (duplicate keys, Windows paths with backslashes, unquoted values).
        values = _line_values(text)
    warnings: tuple[str, ...] = ()
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings = (
            f"{CEKURA_FILE} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"it may hold a key: chmod 600 {path}",
        )
    return CekuraFile(values, warnings)


def _line_values(text: str) -> dict[str, object]:
    """Every ``key = value`` line, the last one winning, with one pair of quotes removed."""
    found: dict[str, object] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.strip().startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[name.strip()] = value
    return found
