"""Settings: one frozen value merged from flags, environment, a TOML file and defaults.

Precedence per key is flag > env > file > default. Every value remembers where it came from, so a
bad one is reported with its source: ``rate='-1' (from env BATCHPOLL_RATE): must be between
0.001 and 1000000 requests/s``. A value that may be a secret (a URL with a password, something
shaped like a key) is masked in every message, and a long one is cut short.
Pure: reads local files, never the network.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from ..errors import ConfigError, UsageError
from ..records import ALL_STATUSES, DEFAULT_FAIL_ON
from .loopback import is_loopback_host
from .shard import COUNT_ENV, INDEX_ENV, Shard, parse_shard, shard_from_env


class Secret:
    """An API key that prints as ``***``; only :meth:`reveal` gives the text back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself: for the request header and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, so comparing keys leaks nothing through timing.
        import hmac  # here: a start-up cost no other command should pay

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a run needs; times are seconds, ``rate`` is requests/second over all ids.

    Values are validated by :func:`load_settings`, not here; every duration within
    MIN_SECONDS..MAX_SECONDS. ``sources`` maps each option name
    to where its value came from: ``default``, ``file PATH``, ``env NAME`` or ``flag --x``.
    """

    output: str = "-"  # JSON-lines sink; "-" is stdout
    base_url: str = "https://api.cekura.ai"  # http(s), host, no trailing "/"
    path: str = "/test_framework/v1/scenarios/scenario-agent-progress/"  # starts with "/"
    concurrency: int = 32  # 1..MAX_CONCURRENCY requests in flight
    rate: float = 10.0  # MIN_RATE..MAX_RATE requests/second, all ids together
    burst: int = 1  # 1..MAX_BURST requests back-to-back above the rate
    interval: float = 3.0  # s, first wait between two polls of one id
    max_interval: float = 30.0  # >= interval, cap of the growing wait
    timeout: float = 3600.0  # s per id from its first poll
    deadline: float | None = None  # s for the whole run; None: no deadline
    request_timeout: float = 30.0  # s for one HTTP attempt
    max_retries: int = 8  # 1..MAX_RETRIES consecutive transient failures that end an id as "error"
    resume: bool = False
    retry_statuses: frozenset[str] = frozenset()  # subset of records.ALL_STATUSES
    fail_on: frozenset[str] = DEFAULT_FAIL_ON
    summary: str | None = None  # path of the JSON run summary
    log_format: str = "auto"  # json | console | auto
    log_level: str = "info"  # debug | info | warning | error
    progress: bool = True
    junit: str | None = None  # write a JUnit XML report here at the end
    split_by_status: str | None = None  # also write DIR/<status>.jsonl
    fsync: bool = False  # make every sink write durable before going on
    allow_insecure_http: bool = False  # let the key travel over plain http to a non-loopback host
    shard: Shard | None = None  # poll only the ids this shard owns; None: every id
    # redis://, rediss:// or unix:// URL of the store sharing the rate budget and the pause;
    # None: both stay in this process. Kept out of repr: the URL may hold a password.
    rate_store: str | None = field(default=None, repr=False)
    rate_key: str = "batchpoll"  # processes with the same rate_key share one budget
    api_key: Secret | None = None  # never a plain CLI value
    api_key_source: str = ""  # "env CEKURA_API_KEY", "file PATH" or "~/.cekura/config.toml"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # for the CLI to log


KEY_PLACES: Final = (
    "set CEKURA_API_KEY, pass --api-key-file PATH, or put api_key in ~/.cekura/config.toml"
)


class MissingApiKey(ConfigError):
    """No API key in any of the places batchpoll looks; the message lists them."""

    def __init__(self, *, oauth_only: bool = False) -> None:
        problem = f"no API key: {KEY_PLACES}"
        if oauth_only:
            problem += (
                f". {_CEKURA_FILE} holds only OAuth tokens from the Cekura CLI, and this API "
                "takes an API key: set CEKURA_API_KEY, or log in to the Cekura CLI with an API key"
            )
        super().__init__("api_key", None, "nowhere", problem)
        # The usual "key=value (from source)" prefix would say nothing here.
        self.args = (self.problem,)


_CEKURA_FILE: Final = "~/.cekura/config.toml"
_KEY_FILE: Final = "api_key_file"
_DEFAULTS: Final = Settings()

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


_PASSWORD_ARG: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def masked_url(url: str) -> str:
    """*url* with its password (or, without a colon, its whole user part) shown as ``***``.

    Errs towards masking: everything before the last ``@`` ahead of the query counts as the
    user part, so a password holding an unescaped ``/`` is masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min(i for i in (rest.find("?"), rest.find("#"), len(rest)) if i >= 0)
    head, tail = rest[:cut], _PASSWORD_ARG.sub(r"\1***", rest[cut:])
    userinfo, at, after = head.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        head = f"{user}:***@{after}" if colon else f"***@{after}"
    return f"{scheme}://{head}{tail}"


def _url_path(value: str) -> str | None:
    if not value.startswith("/") or any(c in value for c in "?# \t\r\n"):
        return "must start with '/' and hold no '?', '#' or whitespace"
    return None


@dataclass(frozen=True, slots=True)
class _Spec:
    parse: Parse
    checks: tuple[Check, ...] = ()


_SPECS: Final[Mapping[str, _Spec]] = {
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
# api_key_file is resolved like an option but is not a Settings field: it only leads to the key.
_RESOLVED: Final[Mapping[str, _Spec]] = {**_SPECS, _KEY_FILE: _Spec(_str, (_non_empty,))}

#: The settable keys of Settings, in declaration order, for the CLI and docs.
OPTION_NAMES: Final[tuple[str, ...]] = tuple(_SPECS)


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
    for base_url; an empty variable is unset. Raises ConfigError naming key, value and source;
    MissingApiKey (a ConfigError) when *require_key* and no key is found anywhere.
    """
    if unknown := sorted(set(flags) - set(_SPECS)):
        raise UsageError(f"unknown settings option(s): {', '.join(unknown)}")
    given: dict[str, object] = {k: v for k, v in flags.items() if v is not None}
    if api_key_file is not None:
        given[_KEY_FILE] = api_key_file
    from_file = _read_config(config_path) if config_path is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in _RESOLVED.items():
        sources[name] = "default"
        if (found := _find(name, given, env, from_file, f"file {config_path}")) is not None:
            values[name], sources[name] = _parse(name, spec, *found), found[1]
    # Read only when something may come from it: the base URL, or the key (when no flag,
    # env or settings file gives one), so a run fully set up elsewhere never touches it.
    needs_key = not env.get("CEKURA_API_KEY") and _KEY_FILE not in values
    wanted = sources["base_url"] == "default" or needs_key
    cekura = _read_cekura_file(home) if wanted else _CekuraFile({})
    if sources["base_url"] == "default" and (url := cekura.string("api_url")) is not None:
        # The official CLI's own setting: below every batchpoll layer, above the default.
        values["base_url"] = _parse("base_url", _SPECS["base_url"], url, _CEKURA_FILE, False)
        sources["base_url"] = _CEKURA_FILE
    if sources["shard"] == "default" and (shard := _kubernetes_shard(env)) is not None:
        values["shard"], sources["shard"] = shard, _KUBERNETES_SOURCE
    _check_intervals(values, sources)
    _check_transport(values, sources)
    key_file = values.pop(_KEY_FILE, None)
    key_file_source = sources.pop(_KEY_FILE)
    warnings = (
        cekura.warnings
        + _env_warnings(env)
        + _sharing_warnings(values, sources)
        + _ignored_warnings(values, sources, env)
    )
    settings = Settings(**values, sources=MappingProxyType(sources), warnings=warnings)
    found_key = _find_key(key_file, key_file_source, env, home, cekura)
    if found_key is None:
        if require_key:
            raise MissingApiKey(oauth_only=cekura.oauth_only)
        return settings
    return replace(settings, api_key=found_key[0], api_key_source=found_key[1])


_KUBERNETES_SOURCE: Final = f"env {INDEX_ENV}/{COUNT_ENV}"
_ENV_PREFIX: Final = "BATCHPOLL_"
#: Every BATCHPOLL_* variable batchpoll reads: one per option (see ``_find``), the shard
#: count of an Indexed Job (``shard``), and the event loop choice (``runner.loop_options``).
KNOWN_ENV: Final[frozenset[str]] = frozenset(
    [f"{_ENV_PREFIX}{name.upper()}" for name in _RESOLVED] + [COUNT_ENV, "BATCHPOLL_LOOP"]
)


def _env_warnings(env: Mapping[str, str]) -> tuple[str, ...]:
    """One warning per BATCHPOLL_* variable that nothing reads, by name only: its value may
    be anything, a key included. A misspelt ``BATCHPOLL_RAT=5`` would otherwise do nothing."""
    warnings = []
    for name in sorted(n for n in env if n.startswith(_ENV_PREFIX) and n not in KNOWN_ENV):
        # Compared without the shared prefix, which would make every name look close.
        suffixes = sorted(known.removeprefix(_ENV_PREFIX) for known in KNOWN_ENV)
        close = difflib.get_close_matches(name.removeprefix(_ENV_PREFIX), suffixes, n=1)
        hint = f"; did you mean {_ENV_PREFIX}{close[0]}?" if close else ""
        warnings.append(f"environment variable {shown(name)} is not a batchpoll setting{hint}")
    return tuple(warnings)


def _kubernetes_shard(env: Mapping[str, str]) -> Shard | None:
    """The shard of a Kubernetes Indexed Job's pod: below every batchpoll layer."""
    try:
        # BATCHPOLL_SHARD is empty or unset here (else it would have won), so only the
        # JOB_COMPLETION_INDEX + BATCHPOLL_SHARDS pair is left to look at.
        return shard_from_env(env)
    except ValueError as exc:
        # Each part shown on its own: the "/" between them would keep a key-shaped part
        # from looking like one word.
        pair = f"{shown(env.get(INDEX_ENV, ''))}/{shown(env.get(COUNT_ENV, ''))}"
        raise ConfigError("shard", pair, _KUBERNETES_SOURCE, str(exc)) from None


def _sharing_warnings(values: Mapping[str, Any], sources: Mapping[str, str]) -> tuple[str, ...]:
    """What a sharded or store-sharing run is told before it starts."""
    warnings: list[str] = []
    store: str | None = values.get("rate_store")
    shard: Shard | None = values.get("shard")
    from_flag = sources["rate_store"].startswith("flag ")
    if store is not None and from_flag and masked_url(store) != store:
        warnings.append(
            "rate_store from --rate-store holds a password, and a command line is visible to "
            "every user of this machine: set BATCHPOLL_RATE_STORE or rate_store in the "
            "config file instead"
        )
    if shard is not None and shard.count > 1 and store is None:
        warnings.append(
            f"shard {shard} without rate_store: each of the {shard.count} processes keeps its "
            f"own rate budget, so together they may send {shard.count} x rate requests/s; "
            "give --rate-store to share one budget, or divide --rate by the shard count"
        )
    return tuple(warnings)


def _ignored_warnings(
    values: Mapping[str, Any], sources: Mapping[str, str], env: Mapping[str, str]
) -> tuple[str, ...]:
    """Settings given that would silently do nothing: said before the run starts."""
    warnings: list[str] = []
    if values.get("retry_statuses") and not values.get("resume", False):
        warnings.append(
            f"retry_statuses (from {sources['retry_statuses']}) does nothing without --resume: "
            "it names the records of an earlier run to poll again"
        )
    if env.get(INDEX_ENV, "").strip() and values.get("shard") is None:
        warnings.append(
            f"{INDEX_ENV} is set (a Kubernetes Indexed Job) but {COUNT_ENV} is not, so this "
            f"pod polls every id, as every other pod of the Job does: set {COUNT_ENV} to the "
            "Job's completions to shard the ids"
        )
    return tuple(warnings)


def _check_transport(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    url = values.get("base_url", _DEFAULTS.base_url)
    parts = urlsplit(url)
    if parts.scheme != "http" or values.get("allow_insecure_http", False):
        return
    if not is_loopback_host(parts.hostname or ""):
        raise ConfigError(
            "base_url",
            shown(url),
            sources["base_url"],
            "plain http:// would send the API key in clear text: use https://, "
            "or pass --allow-insecure-http",
        )


def _check_intervals(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    pair = {
        name: values.get(name, getattr(_DEFAULTS, name)) for name in ("interval", "max_interval")
    }
    if pair["max_interval"] < pair["interval"]:
        # Blame the value the user set: the cap, unless it is the default.
        name, other, op = ("max_interval", "interval", ">=")
        if sources["max_interval"] == "default":
            name, other, op = ("interval", "max_interval", "<=")
        problem = f"must be {op} {other}={pair[other]!r} (from {sources[other]})"
        raise ConfigError(name, pair[name], sources[name], problem)


def parse_statuses(text: str, source: str) -> frozenset[str]:
    """A comma-separated status list (or ``none``) as given on a command line."""
    return frozenset(_parse("fail_on", _SPECS["fail_on"], text, source, True))


def describe(settings: Settings) -> dict[str, object]:
    """The effective settings as a plain dict for logs: sorted lists, the key as ``***``,
    the shard as ``K/N``, any password in ``rate_store`` as ``***``."""
    described: dict[str, object] = {}
    for name in OPTION_NAMES:
        value = getattr(settings, name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, Shard):
            value = str(value)
        described[name] = value
    if settings.rate_store is not None:
        described["rate_store"] = masked_url(settings.rate_store)
    described["api_key"] = None if settings.api_key is None else "***"
    described["api_key_source"] = settings.api_key_source
    return described


def _find(
    name: str,
    flags: Mapping[str, object],
    env: Mapping[str, str],
    from_file: Mapping[str, object],
    file_source: str,
) -> tuple[object, str, bool] | None:
    """The winning raw value of *name*, its source, and whether strings are to be parsed."""
    if name in flags:
        flag = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
        return flags[name], f"flag {flag}", True
    env_names = [f"BATCHPOLL_{name.upper()}"] + (["CEKURA_API_URL"] if name == "base_url" else [])
    for env_name in env_names:
        if env.get(env_name):
            return env[env_name], f"env {env_name}", True
    if name in from_file:
        return from_file[name], file_source, False
    return None


def _parse(name: str, spec: _Spec, raw: object, source: str, text: bool) -> Any:
    try:
        value = spec.parse(raw, text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(name, shown(raw), source, str(exc)) from None
    for check in spec.checks:
        if (problem := check(value)) is not None:
            raise ConfigError(name, shown(raw), source, problem)
    return value


#: The most characters of a value a message shows; a longer one is cut, with its length told.
SHOWN_CHARS: Final = 100
#: Shaped like an API key: one word of 12+ characters mixing letters and digits, with no dot,
#: slash or whitespace (so no path, number, URL, list or status name). Errs towards hiding.
KEY_SHAPE: Final = re.compile(r"(?=[^\d]*\d)(?=[^a-zA-Z]*[a-zA-Z])[^\s./\\]{12,}")
HIDDEN: Final = "<hidden: looks like a key>"


def shown(value: object) -> object:
    """*value* as an error message may show it: a password in a URL (or any ``user@`` part)
    masked, a key-shaped word hidden, and text over ``SHOWN_CHARS`` cut short.

    A careless user puts a key or a URL with a password where any option goes, and error
    messages end up in CI logs that many people read.
    """
    if isinstance(value, Mapping):
        # A table may hold anything, a key or a password included: name its shape only.
        return f"<a table of {len(value)} keys>"
    if isinstance(value, list | tuple):
        # A short array is shown item by item (each item shown by these rules); a long one not.
        return [shown(item) for item in value] if len(value) <= 10 else f"<{len(value)} items>"
    if not isinstance(value, str):
        return value
    if "://" in value:
        value = masked_url(value)
    elif "@" in value:
        value = "***@" + value.rpartition("@")[2]
    elif KEY_SHAPE.fullmatch(value.strip()):
        return HIDDEN
    if len(value) > SHOWN_CHARS:
        value = f"{value[:SHOWN_CHARS]}...[{len(value)} characters in all]"
    return value


#: The most a settings or key file may hold; anything larger is a mistake (a symlink to
#: /dev/zero, a log file), and reading it whole would take the memory.
MAX_CONFIG_BYTES: Final = 1 << 20


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
    source = f"file {path}"
    values: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        # The key's name is the file's text too: of any length, perhaps a pasted secret.
        label = str(shown(key))
        if name == "api_key":
            raise ConfigError(
                label,
                Secret(str(value)),
                source,
                f"the key is never read from this file; {KEY_PLACES}",
            )
        if name not in _RESOLVED:
            close = difflib.get_close_matches(name, list(_RESOLVED), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            # A string under a mistyped key may well be a secret, and a table may hold one
            # (a [cekura] table with its api_key): neither is echoed.
            hidden = Secret(value) if isinstance(value, str) else shown(value)
            raise ConfigError(label, hidden, source, f"unknown key{hint}")
        if name in values:
            raise ConfigError(label, shown(value), source, "is set twice (with '-' and with '_')")
        values[name] = value
    return values


def _find_key(
    key_file: str | None,
    key_file_source: str,
    env: Mapping[str, str],
    home: Path | None,
    cekura: _CekuraFile,
) -> tuple[Secret, str] | None:
    """The API key and where it came from, by layer: an api_key_file given as a flag or in env,
    then CEKURA_API_KEY, then an api_key_file from the TOML file, then ~/.cekura/config.toml."""
    if key_file is not None and not key_file_source.startswith("file "):
        return _read_key_file(key_file, key_file_source, home)
    if env.get("CEKURA_API_KEY"):
        return _checked_key(env["CEKURA_API_KEY"], "env CEKURA_API_KEY"), "env CEKURA_API_KEY"
    if key_file is not None:
        return _read_key_file(key_file, key_file_source, home)
    if (key := cekura.string("api_key")) is not None:
        return _checked_key(key, _CEKURA_FILE), _CEKURA_FILE
    return None


#: A key file holds one key: a few hundred bytes at most.
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


def _read_key_file(path: str, source: str, home: Path | None) -> tuple[Secret, str]:
    if path == "~" or path.startswith("~/"):
        path = str((home or Path.home()) / path[2:])
    name = shown(path)
    try:
        text = read_text_file(path, cap=_MAX_KEY_FILE_BYTES)
    except _Unreadable as exc:
        raise ConfigError(_KEY_FILE, name, source, str(exc)) from None
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
        if name == HIDDEN:
            # The usual slip: the key itself given where its file's path goes.
            problem += (
                "; this looks like a key, and --api-key-file takes the PATH of a file holding one"
            )
        raise ConfigError(_KEY_FILE, name, source, problem) from None
    except UnicodeDecodeError:
        raise ConfigError(_KEY_FILE, name, source, "is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(_KEY_FILE, name, source, "is empty")
    return _checked_key(text, f"file {path}"), f"file {path}"


@dataclass(frozen=True, slots=True)
class _CekuraFile:
    """What the official Cekura CLI's ``~/.cekura/config.toml`` holds for us."""

    values: Mapping[str, object]
    warnings: tuple[str, ...] = ()

    def string(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            hidden = Secret(str(value)) if key == "api_key" else shown(value)
            raise ConfigError(key, hidden, _CEKURA_FILE, "must be a string")
        return value

    @property
    def oauth_only(self) -> bool:
        """Tokens from an OAuth login but no API key, which this API does not accept."""
        return self.string("api_key") is None and any("token" in key.lower() for key in self.values)


def _read_cekura_file(home: Path | None) -> _CekuraFile:
    try:
        path = (home or Path.home()) / ".cekura" / "config.toml"
    except RuntimeError:  # no home directory to look in
        return _CekuraFile({})
    try:
        text = read_text_file(path)
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _CekuraFile({})
    except _Unreadable as exc:
        raise ConfigError("api_key", None, _CEKURA_FILE, str(exc)) from None
    except OSError as exc:
        raise ConfigError("api_key", None, _CEKURA_FILE, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("api_key", None, _CEKURA_FILE, "is not UTF-8 text") from None
    try:
        values: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # The official CLI writes flat `key = "value"` lines that strict TOML may reject
        # (duplicate keys, Windows paths with backslashes, unquoted values).
        values = _line_values(text)
    warnings: tuple[str, ...] = ()
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings = (
            f"{_CEKURA_FILE} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"it may hold a key: chmod 600 {path}",
        )
    return _CekuraFile(values, warnings)


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


#: The shortest key taken. Every occurrence of the key is masked in what batchpoll writes, so
#: a key of a letter or two would mask ordinary text in every record and log line.
MIN_KEY_CHARS: Final = 8


def _checked_key(value: str, source: str) -> Secret:
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
