"""Where the API key comes from, decided from layers already read (pure).

By layer: an ``api_key_file`` given as a flag or in env, then ``CEKURA_API_KEY``, then an
``api_key_file`` from the TOML file, then ``api_key`` in the official Cekura CLI's
``~/.cekura/config.toml``. Reading a key file is the shell's job (``_io.configfiles``); what
it holds is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigError
from .redact import Secret, shown

CEKURA_FILE: Final = "~/.cekura/config.toml"
KEY_PLACES: Final = (
    "set CEKURA_API_KEY, pass --api-key-file PATH, or put api_key in ~/.cekura/config.toml"
)
#: The shortest key taken. Every occurrence of the key is masked in what batchpoll writes, so
#: a key of a letter or two would mask ordinary text in every record and log line.
MIN_KEY_CHARS: Final = 8


class MissingApiKey(ConfigError):
    """No API key in any of the places batchpoll looks; the message lists them."""

    def __init__(self, *, oauth_only: bool = False) -> None:
        problem = f"no API key: {KEY_PLACES}"
        if oauth_only:
            problem += (
                f". {CEKURA_FILE} holds only OAuth tokens from the Cekura CLI, and this API "
                "takes an API key: set CEKURA_API_KEY, or log in to the Cekura CLI with an API key"
            )
        super().__init__("api_key", None, "nowhere", problem)
        # The usual "key=value (from source)" prefix would say nothing here.
        self.args = (self.problem,)


@dataclass(frozen=True, slots=True)
class CekuraFile:
    """What the official Cekura CLI's ``~/.cekura/config.toml`` holds for us."""

    values: Mapping[str, object]
    warnings: tuple[str, ...] = ()

    def string(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            hidden = Secret(str(value)) if key == "api_key" else shown(value)
            raise ConfigError(key, hidden, CEKURA_FILE, "must be a string")
        return value

    @property
    def oauth_only(self) -> bool:
        """Tokens from an OAuth login but no API key, which this API does not accept."""
        return self.string("api_key") is None and any("token" in key.lower() for key in self.values)


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A file said to hold the key, still to be read: *path* as given, *source* its layer."""

    path: str
    source: str


def find_key(
    key_file: str | None,
    key_file_source: str,
    env: Mapping[str, str],
    cekura: CekuraFile,
) -> tuple[Secret, str] | KeyFile | None:
    """The API key and where it came from, or the file to read it from, or None: by layer,
    an api_key_file given as a flag or in env, then CEKURA_API_KEY, then an api_key_file from
    the TOML file, then ~/.cekura/config.toml."""
    if key_file is not None and not key_file_source.startswith("file "):
        return KeyFile(key_file, key_file_source)
    if env.get("CEKURA_API_KEY"):
        return checked_key(env["CEKURA_API_KEY"], "env CEKURA_API_KEY"), "env CEKURA_API_KEY"
    if key_file is not None:
        return KeyFile(key_file, key_file_source)
    if (key := cekura.string("api_key")) is not None:
        return checked_key(key, CEKURA_FILE), CEKURA_FILE
    return None


def checked_key(value: str, source: str) -> Secret:
    """*value* trimmed, as a Secret; ConfigError if it cannot be an API key."""
    key = value.strip()
    # A key with inner whitespace or control characters cannot go into an HTTP header.
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError("api_key", Secret(key), source, "must be one line without spaces")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(
            "api_key",
            Secret(key),
            source,
            f"is {len(key)} characters: an API key has at least {MIN_KEY_CHARS}, and one this "
            "short would be masked out of ordinary text everywhere batchpoll writes",
        )
    return Secret(key)
