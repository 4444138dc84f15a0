"""The parse table: how each option's raw value becomes a typed, checked one (pure).

A raw value comes as text from a flag or the environment, or typed from a TOML file; each
option has one parser and its checks, and a bad value raises ConfigError naming the option,
the value (as :func:`~.redact.shown` shows it) and where it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..records import ALL_STATUSES
from .redact import shown
from .shard import Shard, parse_shard

#: Not a Settings field, but resolved like an option: it only leads to the key.
KEY_FILE: Final = "api_key_file"

# A parser takes a raw value and whether strings are to be parsed (flags, env) or taken as typed
# (TOML); it returns the typed value, or raises ValueError/TypeError whose text is the problem.
Parse = Callable[[object, bool], Any]
# A check takes a parsed value and returns the problem, or None when the value is fine.
Check = Callable[[Any], str | None]


def _str(raw: object, text: bool) -> str:
    if not isinstance(raw, str):
        raise TypeError("must be a string")
    return raw


def _int(raw: object, text: bool) -> int:
    if text and isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    if isinstance(raw, bool) or not isinstance(raw, int):  # bool is an int subclass
        raise TypeError("must be an integer")
    return raw


def _float(raw: object, text: bool) -> float:
    if text and isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    elif isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError("must be a number")
    else:
        try:
            value = float(raw)
        except OverflowError:  # an int beyond float range
            raise ValueError("must be a finite number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


_BOOL_WORDS: Final = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(
    ("0", "false", "no", "off"), False
)


def _bool(raw: object, text: bool) -> bool:
    if text and isinstance(raw, str):
        word = raw.strip().lower()
        if word in _BOOL_WORDS:
            return _BOOL_WORDS[word]
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    if not isinstance(raw, bool):
        raise TypeError("must be true or false")
    return raw


def _optional(parse: Parse) -> Parse:
    """*parse*, except that None or the word "none" means unset."""

    def parse_optional(raw: object, text: bool) -> Any:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() == "none"):
            return None
        return parse(raw, text)

    return parse_optional


_UNKNOWN_NAMED: Final = 5  # unknown statuses a message names


def _statuses(raw: object, text: bool) -> frozenset[str]:
    # Lists come as "a,b" from flags and env, and as an array or "a,b" from TOML.
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple | set | frozenset):
        items = list(raw)
    else:
        raise TypeError("must be a comma-separated string or a list of statuses")
    if not all(isinstance(item, str) for item in items):
        raise TypeError("must list status names as strings")
    names = {str(item).strip().lower() for item in items} - {""}
    if isinstance(raw, str) and not names:  # "" or " , ": too easy to mean "never" by accident
        raise ValueError("is empty; write 'none' for no statuses")
    if "none" in names:
        if names != {"none"}:
            raise ValueError("'none' must stand alone")
        return frozenset()
    if unknown := names - ALL_STATUSES:
        # Named as shown, and only the first few: a pasted key or a megabyte of words is
        # still what the user typed.
        named = [str(shown(name)) for name in sorted(unknown)[:_UNKNOWN_NAMED]]
        if len(unknown) > _UNKNOWN_NAMED:
            named.append(f"and {len(unknown) - _UNKNOWN_NAMED} more")
        raise ValueError(
            f"unknown status {', '.join(named)}; known: {', '.join(sorted(ALL_STATUSES))}"
        )
    return frozenset(names)


def _choice(*options: str) -> Parse:
    def parse_choice(raw: object, text: bool) -> str:
        value = _str(raw, text).strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse_choice


def _base_url(raw: object, text: bool) -> str:
    # Without the trailing slash, base_url + path never holds "//".
    return _str(raw, text).rstrip("/")


#: Bounds of the numeric options. Beyond them nothing is useful and something downstream
#: breaks: a rate of 1e-320 books requests 1/rate = inf seconds apart (the shared store's
#: ceil(1e6 / rate) overflows), and the store counts whole microseconds, so above 1e6/s its
#: spacing rounds to a wrong rate. A rate of 1e6 is how "no limit" is written (one process
#: sends some thousands a second). Each request in flight holds a socket (see ``limits``).
MIN_RATE: Final = 0.001  # requests/s: one every ~17 min; AIMD may go 64 times lower still
MAX_RATE: Final = 1_000_000.0
MAX_CONCURRENCY: Final = 10_000
MAX_BURST: Final = 10_000
MAX_RETRIES: Final = 1_000
#: Every duration (interval, max_interval, timeout, deadline, request_timeout), in seconds.
#: A millisecond is the timing wheel's finest bucket and the loop's timer grain; a year keeps
#: every due time far inside what floats, the wheel's bucket numbers and the loop's timers hold.
MIN_SECONDS: Final = 0.001
MAX_SECONDS: Final = 365 * 24 * 3600.0


def _within(low: float, high: float, unit: str = "") -> Check:
    text = f"must be between {low:.15g} and {high:.15g}{unit}"
    if high == MAX_SECONDS:
        text += " (a year)"

    def check(value: float | None) -> str | None:
        return None if value is None or low <= value <= high else text

    return check


_RATE: Final = _within(MIN_RATE, MAX_RATE, " requests/s")
_SECONDS: Final = _within(MIN_SECONDS, MAX_SECONDS, " s")


def _non_empty(value: str | None) -> str | None:
    return None if value is None or value.strip() else "must not be empty"


def _http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _shard(raw: object, text: bool) -> Shard:
    if isinstance(raw, Shard):
        return raw
    if not isinstance(raw, str):
        raise TypeError('must be a string "K/N", like "0/3"')
    return parse_shard(raw)


def _store_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        return "is not a valid URL"
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            return "must name a host: redis://HOST:PORT/DB"
        db = parts.path.removeprefix("/")
        if db and not (db.isascii() and db.isdigit()):
            return "must end in /DB, a database number like /0, or nothing"
    elif parts.scheme == "unix":
        if not parts.path:
            return "must name a socket path: unix:///run/redis/redis.sock?db=0"
    else:
        return "must be a redis://, rediss:// or unix:// URL"
    if parts.fragment:
        return "must not have a fragment"
    return None


def _url_path(value: str) -> str | None:
    if not value.startswith("/") or any(c in value for c in "?# \t\r\n"):
        return "must start with '/' and hold no '?', '#' or whitespace"
    return None


@dataclass(frozen=True, slots=True)
class _Spec:
    parse: Parse
    checks: tuple[Check, ...] = ()


SPECS: Final[Mapping[str, _Spec]] = {
    "output": _Spec(_str, (_non_empty,)),
    "base_url": _Spec(_base_url, (_http_url,)),
    "path": _Spec(_str, (_url_path,)),
    "concurrency": _Spec(_int, (_within(1, MAX_CONCURRENCY),)),
    "rate": _Spec(_float, (_RATE,)),
    "burst": _Spec(_int, (_within(1, MAX_BURST),)),
    "interval": _Spec(_float, (_SECONDS,)),
    "max_interval": _Spec(_float, (_SECONDS,)),
    "timeout": _Spec(_float, (_SECONDS,)),
    "deadline": _Spec(_optional(_float), (_SECONDS,)),
    "request_timeout": _Spec(_float, (_SECONDS,)),
    "max_retries": _Spec(_int, (_within(1, MAX_RETRIES),)),
    "resume": _Spec(_bool),
    "retry_statuses": _Spec(_statuses),
    "fail_on": _Spec(_statuses),
    "summary": _Spec(_optional(_str), (_non_empty,)),
    "log_format": _Spec(_choice("json", "console", "auto")),
    "log_level": _Spec(_choice("debug", "info", "warning", "error")),
    "progress": _Spec(_bool),
    "junit": _Spec(_optional(_str), (_non_empty,)),
    "split_by_status": _Spec(_optional(_str), (_non_empty,)),
    "fsync": _Spec(_bool),
    "allow_insecure_http": _Spec(_bool),
    "shard": _Spec(_optional(_shard)),
    "rate_store": _Spec(_optional(_str), (_non_empty, _store_url)),
    # Trimmed: " g4" from a hand-edited file must share g4's budget, not make a second one.
    "rate_key": _Spec(lambda raw, text: _str(raw, text).strip(), (_non_empty,)),
}
#: Every name resolved by layers: the options and api_key_file.
RESOLVED: Final[Mapping[str, _Spec]] = {**SPECS, KEY_FILE: _Spec(_str, (_non_empty,))}

#: The settable keys of Settings, in declaration order, for the CLI and docs.
OPTION_NAMES: Final[tuple[str, ...]] = tuple(SPECS)


def parse_value(name: str, raw: object, source: str, text: bool) -> Any:
    """*raw* parsed and checked as option *name* wants; *text*: strings are to be parsed."""
    spec = RESOLVED[name]
    try:
        value = spec.parse(raw, text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(name, shown(raw), source, str(exc)) from None
    for check in spec.checks:
        if (problem := check(value)) is not None:
            raise ConfigError(name, shown(raw), source, problem)
    return value


def parse_statuses(text: str, source: str) -> frozenset[str]:
    """A comma-separated status list (or ``none``) as given on a command line."""
    return frozenset(parse_value("fail_on", text, source, True))
