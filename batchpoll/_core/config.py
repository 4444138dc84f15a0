"""Settings: one frozen value merged from flags, environment, a TOML file and defaults (pure).

Precedence per key is flag > env > file > default. Every value remembers where it came from, so a
bad one is reported with its source: ``rate='-1' (from env BATCHPOLL_RATE): must be between
0.001 and 1000000 requests/s``. A value that may be a secret (a URL with a password, something
shaped like a key) is masked in every message, and a long one is cut short (``redact.shown``).
The layers come in already read: ``_io.configfiles`` reads the files and the environment.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from ..errors import ConfigError, UsageError
from ..records import DEFAULT_FAIL_ON
from .apikey import CEKURA_FILE, KEY_PLACES, CekuraFile, KeyFile, find_key
from .loopback import is_loopback_host
from .redact import MASK, Secret, masked_url, shown
from .settings_table import KEY_FILE, OPTION_NAMES, RESOLVED, SPECS, parse_value
from .shard import COUNT_ENV, INDEX_ENV, Shard, shard_from_env


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a run needs; times are seconds, ``rate`` is requests/second over all ids.

    Values are validated by the merge (:func:`resolve`, :func:`settle`), not here; every
    duration within MIN_SECONDS..MAX_SECONDS. ``sources`` maps each option name to where its
    value came from: ``default``, ``file PATH``, ``env NAME`` or ``flag --x``.
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


_DEFAULTS: Final = Settings()


def given_layer(flags: Mapping[str, object], api_key_file: str | None) -> dict[str, object]:
    """The options the user gave: *flags* keyed by field name, typed or as strings (None
    counts as not given), plus the api_key_file. UsageError for a name that is no option."""
    if unknown := sorted(set(flags) - set(SPECS)):
        raise UsageError(f"unknown settings option(s): {', '.join(unknown)}")
    given: dict[str, object] = {k: v for k, v in flags.items() if v is not None}
    if api_key_file is not None:
        given[KEY_FILE] = api_key_file
    return given


def file_layer(data: Mapping[str, object], source: str) -> dict[str, object]:
    """The option values of a parsed batchpoll TOML file, keyed by field name: ConfigError
    for a key that is no option, the API key itself, or one set twice."""
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
        if name not in RESOLVED:
            close = difflib.get_close_matches(name, list(RESOLVED), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            # A string under a mistyped key may well be a secret, and a table may hold one
            # (a [cekura] table with its api_key): neither is echoed.
            hidden = Secret(value) if isinstance(value, str) else shown(value)
            raise ConfigError(label, hidden, source, f"unknown key{hint}")
        if name in values:
            raise ConfigError(label, shown(value), source, "is set twice (with '-' and with '_')")
        values[name] = value
    return values


@dataclass(frozen=True, slots=True)
class Resolved:
    """Each option's winning value (absent: the default) and its source, by flag > env > file;
    the Cekura CLI's file and the key are still to come (:func:`settle`)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def wants_cekura_file(self, env: Mapping[str, str]) -> bool:
        """Whether something may come from ~/.cekura/config.toml: the base URL, or the key
        (when no flag, env or settings file gives one), so a run fully set up elsewhere
        never reads it."""
        needs_key = not env.get("CEKURA_API_KEY") and KEY_FILE not in self.values
        return self.sources["base_url"] == "default" or needs_key


def resolve(
    given: Mapping[str, object],
    env: Mapping[str, str],
    from_file: Mapping[str, object],
    file_source: str,
) -> Resolved:
    """Merge flag > env > file per key and parse each winner. Env names are
    ``BATCHPOLL_<NAME>``, plus ``CEKURA_API_URL`` for base_url; an empty variable is unset."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in RESOLVED:
        sources[name] = "default"
        if (found := _find(name, given, env, from_file, file_source)) is not None:
            values[name], sources[name] = parse_value(name, *found), found[1]
    return Resolved(values, sources)


def settle(
    resolved: Resolved, env: Mapping[str, str], cekura: CekuraFile
) -> tuple[Settings, tuple[Secret, str] | KeyFile | None]:
    """The settings without the key, validated as a whole, and where the key comes from:
    found (with its source), a file still to read, or nowhere."""
    values, sources = dict(resolved.values), dict(resolved.sources)
    if sources["base_url"] == "default" and (url := cekura.string("api_url")) is not None:
        # The official CLI's own setting: below every batchpoll layer, above the default.
        values["base_url"] = parse_value("base_url", url, CEKURA_FILE, False)
        sources["base_url"] = CEKURA_FILE
    if sources["shard"] == "default" and (shard := _kubernetes_shard(env)) is not None:
        values["shard"], sources["shard"] = shard, _KUBERNETES_SOURCE
    _check_intervals(values, sources)
    _check_transport(values, sources)
    key_file = values.pop(KEY_FILE, None)
    key_file_source = sources.pop(KEY_FILE)
    warnings = (
        cekura.warnings
        + _env_warnings(env)
        + _sharing_warnings(values, sources)
        + _ignored_warnings(values, sources, env)
    )
    settings = Settings(**values, sources=MappingProxyType(sources), warnings=warnings)
    return settings, find_key(key_file, key_file_source, env, cekura)


_KUBERNETES_SOURCE: Final = f"env {INDEX_ENV}/{COUNT_ENV}"
_ENV_PREFIX: Final = "BATCHPOLL_"
#: Every BATCHPOLL_* variable batchpoll reads: one per option (see ``_find``), the shard
#: count of an Indexed Job (``shard``), and the event loop choice (``_cli.run.loop_options``).
KNOWN_ENV: Final[frozenset[str]] = frozenset(
    [f"{_ENV_PREFIX}{name.upper()}" for name in RESOLVED] + [COUNT_ENV, "BATCHPOLL_LOOP"]
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
    described["api_key"] = None if settings.api_key is None else MASK
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
