"""Settings: precedence, parsing per source, validation messages, where the API key comes from."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from batchpoll._core.apikey import MissingApiKey
from batchpoll._core.config import Settings, describe
from batchpoll._core.redact import Secret
from batchpoll._core.settings_table import OPTION_NAMES
from batchpoll._core.shard import Shard
from batchpoll._io.configfiles import load_settings
from batchpoll.errors import ConfigError, UsageError
from batchpoll.records import ALL_STATUSES

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "configs" / "default.toml"
KEY = "sk-live-0123456789abcdef"


def load(
    tmp_path: Path,
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    key_file: str | None = None,
    require_key: bool = False,
) -> Settings:
    """Load settings with nothing but what the test gives; ~ is tmp_path."""
    config_path = None
    if toml is not None:
        config = tmp_path / "batchpoll.toml"
        config.write_text(toml, encoding="utf-8")
        config_path = str(config)
    return load_settings(
        flags or {},
        env or {},
        config_path,
        key_file,
        home=tmp_path,
        require_key=require_key,
    )


def write(path: Path, text: str) -> str:
    """Write *text* to *path* (making parents) and return the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_when_nothing_is_given(tmp_path: Path) -> None:
    """With no flags, env, file or key, every value is the default and says so."""
    settings = load(tmp_path)
    assert settings == Settings()
    assert settings.api_key is None
    assert settings.api_key_source == ""
    assert dict(settings.sources) == dict.fromkeys(OPTION_NAMES, "default")


def test_option_names_are_the_settable_fields() -> None:
    """OPTION_NAMES lists every Settings field except the key and the bookkeeping."""
    names = [f.name for f in dataclasses.fields(Settings)]
    assert list(OPTION_NAMES) == [
        n for n in names if n not in {"api_key", "api_key_source", "sources", "warnings"}
    ]


@pytest.mark.parametrize(
    ("flags", "env", "toml", "key", "expected", "source"),
    [
        ({"rate": 4.0}, {"BATCHPOLL_RATE": "3"}, "rate = 2", "rate", 4.0, "flag --rate"),
        ({}, {"BATCHPOLL_RATE": "3"}, "rate = 2", "rate", 3.0, "env BATCHPOLL_RATE"),
        ({}, {}, "rate = 2", "rate", 2.0, "file"),
        ({}, {}, "", "rate", 10.0, "default"),
        ({}, {"BATCHPOLL_RATE": ""}, "rate = 2", "rate", 2.0, "file"),
        ({"rate": None}, {}, "rate = 2", "rate", 2.0, "file"),
        (
            {},
            {"BATCHPOLL_BASE_URL": "https://a.test", "CEKURA_API_URL": "https://b.test"},
            'base_url = "https://c.test"',
            "base_url",
            "https://a.test",
            "env BATCHPOLL_BASE_URL",
        ),
        (
            {},
            {"CEKURA_API_URL": "https://b.test"},
            'base_url = "https://c.test"',
            "base_url",
            "https://b.test",
            "env CEKURA_API_URL",
        ),
        (
            {"base_url": "https://f.test"},
            {"CEKURA_API_URL": "https://b.test"},
            "",
            "base_url",
            "https://f.test",
            "flag --base-url",
        ),
        (
            {"progress": False},
            {"BATCHPOLL_PROGRESS": "1"},
            "",
            "progress",
            False,
            "flag --no-progress",
        ),
        ({}, {}, "max-interval = 40", "max_interval", 40.0, "file"),
    ],
    ids=[
        "flag-beats-env",
        "env-beats-file",
        "file-beats-default",
        "default",
        "empty-env-is-unset",
        "none-flag-is-not-given",
        "batchpoll-url-beats-cekura-url",
        "cekura-url-beats-file",
        "flag-beats-cekura-url",
        "no-progress-flag",
        "dashed-file-key",
    ],
)
def test_precedence(
    tmp_path: Path,
    flags: dict[str, object],
    env: dict[str, str],
    toml: str,
    key: str,
    expected: object,
    source: str,
) -> None:
    """Each source wins over the next: flag > env > file > default, and the source is kept."""
    settings = load(tmp_path, flags=flags, env=env, toml=toml)
    assert getattr(settings, key) == expected
    want = f"file {tmp_path / 'batchpoll.toml'}" if source == "file" else source
    assert settings.sources[key] == want


ENV_CASES: list[tuple[str, str, str, object]] = [
    ("BATCHPOLL_OUTPUT", "out.jsonl", "output", "out.jsonl"),
    ("BATCHPOLL_PATH", "/v2/progress/", "path", "/v2/progress/"),
    ("BATCHPOLL_CONCURRENCY", " 7 ", "concurrency", 7),
    ("BATCHPOLL_RATE", "2.5", "rate", 2.5),
    ("BATCHPOLL_BURST", "4", "burst", 4),
    ("BATCHPOLL_INTERVAL", "1e-1", "interval", 0.1),
    ("BATCHPOLL_MAX_INTERVAL", "60", "max_interval", 60.0),
    ("BATCHPOLL_TIMEOUT", "90", "timeout", 90.0),
    ("BATCHPOLL_DEADLINE", "600", "deadline", 600.0),
    ("BATCHPOLL_DEADLINE", "None", "deadline", None),
    ("BATCHPOLL_REQUEST_TIMEOUT", "5", "request_timeout", 5.0),
    ("BATCHPOLL_MAX_RETRIES", "3", "max_retries", 3),
    ("BATCHPOLL_RESUME", "yes", "resume", True),
    ("BATCHPOLL_RETRY_STATUSES", "error, timed_out", "retry_statuses", {"error", "timed_out"}),
    ("BATCHPOLL_FAIL_ON", "FAILED,,cancelled", "fail_on", {"failed", "cancelled"}),
    ("BATCHPOLL_FAIL_ON", "none", "fail_on", frozenset()),
    ("BATCHPOLL_SUMMARY", "sum.json", "summary", "sum.json"),
    ("BATCHPOLL_LOG_FORMAT", "JSON", "log_format", "json"),
    ("BATCHPOLL_LOG_LEVEL", "debug", "log_level", "debug"),
    ("BATCHPOLL_PROGRESS", "off", "progress", False),
    ("BATCHPOLL_BASE_URL", "https://eu.cekura.test/", "base_url", "https://eu.cekura.test"),
]


@pytest.mark.parametrize(
    ("name", "text", "key", "expected"),
    ENV_CASES,
    ids=[f"{name}={text}" for name, text, _, _ in ENV_CASES],
)
def test_env_values_are_parsed_per_type(
    tmp_path: Path, name: str, text: str, key: str, expected: object
) -> None:
    """An environment string becomes the field's type: int, float, bool, list, optional, choice."""
    settings = load(tmp_path, env={name: text})
    assert getattr(settings, key) == expected
    assert settings.sources[key] == f"env {name}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_env_bool_words(tmp_path: Path, text: str, expected: bool) -> None:
    """Booleans from env take 1/0, true/false, yes/no and on/off in any case."""
    assert load(tmp_path, env={"BATCHPOLL_RESUME": text}).resume is expected


def test_flags_may_be_typed_or_strings(tmp_path: Path) -> None:
    """Flag values typed by argparse are checked as they are; strings are parsed like env."""
    settings = load(
        tmp_path,
        flags={"concurrency": "5", "rate": 3, "fail_on": ["error"], "resume": True},
    )
    assert (settings.concurrency, settings.rate) == (5, 3.0)
    assert settings.fail_on == {"error"}
    assert settings.resume is True


def test_toml_types_are_accepted(tmp_path: Path) -> None:
    """A TOML file takes ints for floats, arrays or comma strings for lists, and dashed keys."""
    toml = """
        rate = 5
        deadline = 120
        concurrency = 4
        resume = true
        progress = false
        retry-statuses = "error,timed_out"
        fail_on = ["failed"]
        summary = "s.json"
        log_level = "warning"
    """
    settings = load(tmp_path, toml=toml)
    assert settings.rate == 5.0
    assert isinstance(settings.rate, float)
    assert settings.deadline == 120.0
    assert settings.concurrency == 4
    assert (settings.resume, settings.progress) == (True, False)
    assert settings.retry_statuses == {"error", "timed_out"}
    assert settings.fail_on == {"failed"}
    assert (settings.summary, settings.log_level) == ("s.json", "warning")


@pytest.mark.parametrize(
    ("line", "key", "shown"),
    [
        ('rate = "fast"', "rate", "'fast'"),
        ("concurrency = 1.5", "concurrency", "1.5"),
        ('resume = "yes"', "resume", "'yes'"),
        ("rate = true", "rate", "True"),
        ("burst = false", "burst", "False"),
        ("output = 3", "output", "3"),
        ("fail_on = [1, 2]", "fail_on", "[1, 2]"),
        ("fail_on = 7", "fail_on", "7"),
        ("interval = nan", "interval", "nan"),
        ("timeout = inf", "timeout", "inf"),
        ('deadline = "soon"', "deadline", "'soon'"),
        ("log_format = 1", "log_format", "1"),
    ],
    ids=[
        "string-for-float",
        "float-for-int",
        "string-for-bool",
        "bool-for-float",
        "bool-for-int",
        "int-for-string",
        "ints-in-list",
        "int-for-list",
        "nan",
        "inf",
        "string-for-optional-float",
        "int-for-choice",
    ],
)
def test_wrong_toml_types_name_key_value_and_file(
    tmp_path: Path, line: str, key: str, shown: str
) -> None:
    """A TOML value of the wrong type is a ConfigError naming key, value and file."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml=line)
    assert str(caught.value).startswith(f"{key}={shown} (from file {tmp_path / 'batchpoll.toml'}):")
    assert caught.value.key == key


def test_unknown_key_suggests_the_closest_name(tmp_path: Path) -> None:
    """An unknown key names the file and suggests the nearest option."""
    with pytest.raises(ConfigError, match=r"unknown key; did you mean 'max_interval'\?") as caught:
        load(tmp_path, toml="max_intervall = 3")
    assert caught.value.key == "max_intervall"
    assert str(tmp_path / "batchpoll.toml") in str(caught.value)


def test_unknown_key_without_a_near_name(tmp_path: Path) -> None:
    """An unknown key with nothing close is still named, without a suggestion."""
    with pytest.raises(ConfigError, match=r"unknown key$"):
        load(tmp_path, toml="zzz = 1")


def test_unknown_key_does_not_echo_its_string_value(tmp_path: Path) -> None:
    """A string under a mistyped key may be a secret, so the message hides it."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml=f'apikey = "{KEY}"')
    assert KEY not in str(caught.value)


def test_api_key_in_the_config_file_is_refused_without_echo(tmp_path: Path) -> None:
    """The key itself may not sit in the batchpoll file, and the error does not repeat it."""
    with pytest.raises(ConfigError, match="never read from this file") as caught:
        load(tmp_path, toml=f'api_key = "{KEY}"')
    assert KEY not in str(caught.value)


def test_same_key_with_dash_and_underscore_is_an_error(tmp_path: Path) -> None:
    """A key written both ways is ambiguous, so it is refused."""
    with pytest.raises(ConfigError, match="set twice"):
        load(tmp_path, toml="max_interval = 3\nmax-interval = 4")


def test_invalid_toml_names_the_path_and_line(tmp_path: Path) -> None:
    """A file that is not TOML gives the path and the parser's line, not a traceback."""
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2") as caught:
        load(tmp_path, toml="rate = 1\nburst = = 2\n")
    assert str(tmp_path / "batchpoll.toml") in str(caught.value)


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    """A --config path that does not exist is a ConfigError naming it."""
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_settings({}, {}, missing, None, home=tmp_path, require_key=False)
    assert missing in str(caught.value)


def test_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    """A flags key that is no option is the caller's mistake, reported as a usage error."""
    with pytest.raises(UsageError, match="api_key"):
        load(tmp_path, flags={"api_key": KEY})


@pytest.mark.parametrize(
    ("var", "value", "key", "problem"),
    [
        ("BATCHPOLL_CONCURRENCY", "0", "concurrency", "must be between 1 and 10000"),
        ("BATCHPOLL_CONCURRENCY", "2.5", "concurrency", "must be an integer"),
        ("BATCHPOLL_RATE", "-1", "rate", "must be between 0.001 and 1000000 requests/s"),
        ("BATCHPOLL_RATE", "nan", "rate", "must be a finite number"),
        ("BATCHPOLL_RATE", "fast", "rate", "must be a number"),
        ("BATCHPOLL_BURST", "0", "burst", "must be between 1 and 10000"),
        ("BATCHPOLL_INTERVAL", "0", "interval", "must be between 0.001 and 31536000 s"),
        ("BATCHPOLL_MAX_INTERVAL", "-3", "max_interval", "must be between 0.001"),
        ("BATCHPOLL_TIMEOUT", "inf", "timeout", "must be a finite number"),
        ("BATCHPOLL_DEADLINE", "0", "deadline", "must be between 0.001"),
        ("BATCHPOLL_REQUEST_TIMEOUT", "0", "request_timeout", "must be between 0.001"),
        ("BATCHPOLL_MAX_RETRIES", "0", "max_retries", "must be between 1 and 1000"),
        ("BATCHPOLL_RESUME", "maybe", "resume", "must be one of 1/0"),
        ("BATCHPOLL_LOG_FORMAT", "xml", "log_format", "must be one of json, console, auto"),
        ("BATCHPOLL_LOG_LEVEL", "trace", "log_level", "must be one of debug, info"),
        ("BATCHPOLL_BASE_URL", "ftp://x.test", "base_url", "must be an http"),
        ("CEKURA_API_URL", "https://", "base_url", "must be an http"),
        ("CEKURA_API_URL", "api.cekura.ai", "base_url", "must be an http"),
        ("CEKURA_API_URL", "http://x.test:port", "base_url", "is not a valid URL"),
        ("CEKURA_API_URL", "http://x.test/?a=1", "base_url", "must not have a query"),
        ("BATCHPOLL_PATH", "progress/", "path", "must start with '/'"),
        ("BATCHPOLL_PATH", "/p?x=1", "path", "must start with '/'"),
        ("BATCHPOLL_OUTPUT", "  ", "output", "must not be empty"),
        ("BATCHPOLL_SUMMARY", " ", "summary", "must not be empty"),
        ("BATCHPOLL_FAIL_ON", "failed,nope", "fail_on", "unknown status nope"),
        ("BATCHPOLL_RETRY_STATUSES", "in_progress", "retry_statuses", "unknown status in_prog"),
        ("BATCHPOLL_FAIL_ON", "none,failed", "fail_on", "'none' must stand alone"),
        ("BATCHPOLL_FAIL_ON", " , ", "fail_on", "is empty; write 'none'"),
    ],
    ids=[
        "concurrency-zero",
        "concurrency-float",
        "rate-negative",
        "rate-nan",
        "rate-word",
        "burst-zero",
        "interval-zero",
        "max-interval-negative",
        "timeout-inf",
        "deadline-zero",
        "request-timeout-zero",
        "max-retries-zero",
        "resume-word",
        "log-format",
        "log-level",
        "url-scheme",
        "url-no-host",
        "url-no-scheme",
        "url-bad-port",
        "url-query",
        "path-relative",
        "path-query",
        "output-blank",
        "summary-blank",
        "fail-on-unknown",
        "retry-in-progress",
        "none-not-alone",
        "only-commas",
    ],
)
def test_validation_failures_name_key_value_and_source(
    tmp_path: Path, var: str, value: str, key: str, problem: str
) -> None:
    """Every bad value is a ConfigError whose message names its key, value and source."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={var: value})
    assert str(caught.value).startswith(f"{key}={value!r} (from env {var}): {problem}")
    assert (caught.value.key, caught.value.source) == (key, f"env {var}")


def test_validation_names_flag_and_file_sources(tmp_path: Path) -> None:
    """A bad value from a flag or the file is reported with that source."""
    with pytest.raises(ConfigError, match=re.escape("rate=0 (from flag --rate): must be between")):
        load(tmp_path, flags={"rate": 0})
    with pytest.raises(ConfigError, match=re.escape("burst=0 (from file ")):
        load(tmp_path, toml="burst = 0")


def test_overridden_bad_values_are_not_reported(tmp_path: Path) -> None:
    """Only the winning value is checked, so a flag can override a bad env or file value."""
    settings = load(tmp_path, flags={"rate": 2.0}, env={"BATCHPOLL_RATE": "-1"}, toml="rate = 0")
    assert settings.rate == 2.0


def test_max_interval_below_interval_blames_the_cap_and_names_both(tmp_path: Path) -> None:
    """max_interval < interval names both values and both sources."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={"max_interval": 2.0}, env={"BATCHPOLL_INTERVAL": "5"})
    assert str(caught.value) == (
        "max_interval=2.0 (from flag --max-interval): "
        "must be >= interval=5.0 (from env BATCHPOLL_INTERVAL)"
    )


def test_interval_above_default_cap_blames_the_interval(tmp_path: Path) -> None:
    """When only the interval was set, it is the value named as wrong."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={"interval": 60.0})
    assert str(caught.value) == (
        "interval=60.0 (from flag --interval): must be <= max_interval=30.0 (from default)"
    )


@pytest.mark.parametrize(
    "toml",
    ['fail_on = "none"', 'fail_on = ["none"]', "fail_on = []"],
    ids=["string", "array", "empty-array"],
)
def test_fail_on_none_means_never(tmp_path: Path, toml: str) -> None:
    """fail_on "none" (alone) or an empty array is the empty set."""
    assert load(tmp_path, toml=toml).fail_on == frozenset()


def test_empty_fail_on_flag_is_refused(tmp_path: Path) -> None:
    """An empty list string is refused rather than silently meaning "never fail"."""
    with pytest.raises(ConfigError, match="write 'none'"):
        load(tmp_path, flags={"fail_on": ""})


def test_invalid_status_names_list_the_known_ones(tmp_path: Path) -> None:
    """An unknown status name is refused and the message lists the valid ones."""
    with pytest.raises(ConfigError, match="unknown status bogus; known: cancelled, completed"):
        load(tmp_path, toml='retry_statuses = ["error", "bogus"]')


@pytest.mark.parametrize(
    ("flag_file", "env", "toml_file", "cekura", "expected_source"),
    [
        (True, {"CEKURA_API_KEY": "from-env"}, True, True, "flag-file"),
        (False, {"CEKURA_API_KEY": "from-env"}, True, True, "env CEKURA_API_KEY"),
        (False, {}, True, True, "toml-file"),
        (False, {}, False, True, "~/.cekura/config.toml"),
        (
            False,
            {"CEKURA_API_KEY": "from-env", "BATCHPOLL_API_KEY_FILE": "?"},
            False,
            True,
            "env-file",
        ),
        (False, {"CEKURA_API_KEY": ""}, False, True, "~/.cekura/config.toml"),
    ],
    ids=[
        "flag-file-beats-env",
        "env-beats-toml-file",
        "toml-file-beats-cekura",
        "cekura-last",
        "batchpoll-env-file-beats-cekura-env",
        "empty-env-key-is-unset",
    ],
)
def test_key_lookup_order(
    tmp_path: Path,
    flag_file: bool,
    env: dict[str, str],
    toml_file: bool,
    cekura: bool,
    expected_source: str,
) -> None:
    """The key comes from the highest layer: --api-key-file, env, TOML api_key_file, ~/.cekura."""
    flag_path = write(tmp_path / "flag.key", "from-flag-file\n")
    toml_path = write(tmp_path / "toml.key", "from-toml-file\n")
    env_path = write(tmp_path / "env.key", "from-env-file\n")
    env = {k: env_path if v == "?" else v for k, v in env.items()}
    if cekura:
        write(tmp_path / ".cekura" / "config.toml", 'api_key = "from-cekura"\n')
    settings = load(
        tmp_path,
        env=env,
        toml=f'api_key_file = "{toml_path}"' if toml_file else None,
        key_file=flag_path if flag_file else None,
        require_key=True,
    )
    expected = {
        "flag-file": ("from-flag-file", f"file {flag_path}"),
        "toml-file": ("from-toml-file", f"file {toml_path}"),
        "env-file": ("from-env-file", f"file {env_path}"),
        "env CEKURA_API_KEY": ("from-env", "env CEKURA_API_KEY"),
        "~/.cekura/config.toml": ("from-cekura", "~/.cekura/config.toml"),
    }[expected_source]
    assert settings.api_key is not None
    assert (settings.api_key.reveal(), settings.api_key_source) == expected


def test_missing_key_message_says_where_to_put_one(tmp_path: Path) -> None:
    """With no key anywhere, the error (exit 2) lists the places a key is looked for."""
    with pytest.raises(MissingApiKey) as caught:
        load(tmp_path, require_key=True)
    assert str(caught.value) == (
        "no API key: set CEKURA_API_KEY, pass --api-key-file PATH, "
        "or put api_key in ~/.cekura/config.toml"
    )
    assert isinstance(caught.value, ConfigError)
    assert caught.value.exit_code == 2


def test_key_not_required_gives_none(tmp_path: Path) -> None:
    """With require_key=False a missing key is simply None."""
    assert load(tmp_path, require_key=False).api_key is None


def test_key_file_is_stripped(tmp_path: Path) -> None:
    """Whitespace and the newline around the key in a key file are dropped."""
    path = write(tmp_path / "key", f"  {KEY}\r\n\n")
    settings = load(tmp_path, key_file=path)
    assert settings.api_key == Secret(KEY)
    assert settings.api_key_source == f"file {path}"


def test_key_file_path_with_tilde_uses_home(tmp_path: Path) -> None:
    """A key file path written as ~/... is looked up under the home directory."""
    write(tmp_path / "secrets" / "cekura", KEY)
    settings = load(tmp_path, toml='api_key_file = "~/secrets/cekura"')
    assert settings.api_key == Secret(KEY)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("", "is empty"), (" \n", "is empty"), ("a b", "one line without")],
    ids=["missing", "empty", "blank", "two-words"],
)
def test_bad_key_file_names_the_path(tmp_path: Path, content: str | None, problem: str) -> None:
    """A missing, empty or malformed key file is a ConfigError naming its path."""
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as caught:
        load(tmp_path, key_file=str(path))
    assert str(path) in str(caught.value)


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    """A key file path naming a directory is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="not a regular file"):
        load(tmp_path, key_file=str(tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        f'api_key = "{KEY}"\n',
        f'# written by cekura\napi_key = "{KEY}"\norg = "acme"\n',
        f"api_key = {KEY}\n",
        f'api_key = "old"\napi_key = "{KEY}"\n',
        f"workdir = \"C:\\Users\\me\"\napi_key = '{KEY}'\n",
    ],
    ids=["toml", "toml-with-others", "unquoted", "duplicate-last-wins", "windows-path"],
)
def test_cekura_config_with_toml_or_line_fallback(tmp_path: Path, content: str) -> None:
    """~/.cekura/config.toml is read as TOML, or line by line when strict TOML rejects it."""
    write(tmp_path / ".cekura" / "config.toml", content)
    settings = load(tmp_path, require_key=True)
    assert settings.api_key == Secret(KEY)
    assert settings.api_key_source == "~/.cekura/config.toml"


def test_cekura_config_without_api_key_is_no_key(tmp_path: Path) -> None:
    """A ~/.cekura/config.toml with no (or an empty) api_key leads to the missing-key error."""
    write(tmp_path / ".cekura" / "config.toml", 'api_key = ""\norg = "acme"\n')
    with pytest.raises(MissingApiKey):
        load(tmp_path, require_key=True)


def test_key_never_shows_in_repr_or_describe(tmp_path: Path) -> None:
    """Neither repr(settings) nor describe() shows the key."""
    settings = load(tmp_path, env={"CEKURA_API_KEY": KEY})
    assert settings.api_key == Secret(KEY)
    assert KEY not in repr(settings)
    assert KEY not in str(settings)
    assert KEY not in repr(describe(settings))


def test_key_never_shows_in_config_errors(tmp_path: Path) -> None:
    """A malformed key is reported without its text."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={"CEKURA_API_KEY": f"{KEY} {KEY}"})
    assert KEY not in str(caught.value)
    assert "env CEKURA_API_KEY" in str(caught.value)


def test_describe_is_plain_and_masked(tmp_path: Path) -> None:
    """describe() gives every option, sorted lists for sets, and the key as ***."""
    settings = load(tmp_path, env={"CEKURA_API_KEY": KEY})
    described = describe(settings)
    assert list(described) == [*OPTION_NAMES, "api_key", "api_key_source"]
    assert described["fail_on"] == sorted(Settings().fail_on)
    assert described["retry_statuses"] == []
    assert described["api_key"] == "***"
    assert described["api_key_source"] == "env CEKURA_API_KEY"
    assert describe(Settings())["api_key"] is None


def test_default_toml_matches_the_defaults(tmp_path: Path) -> None:
    """configs/default.toml loads to exactly Settings() field by field, so it cannot drift."""
    settings = load_settings({}, {}, str(DEFAULT_TOML), None, home=tmp_path, require_key=False)
    defaults = Settings()
    for name in OPTION_NAMES:
        assert getattr(settings, name) == getattr(defaults, name), name
    unset = {name for name, source in settings.sources.items() if source == "default"}
    # Only the options whose default is "none" are left commented out.
    assert unset == {name for name in OPTION_NAMES if getattr(defaults, name) is None}
    assert "deadline" in unset


def test_default_toml_mentions_every_option() -> None:
    """Every option appears in configs/default.toml, set or commented out, with a comment above."""
    lines = DEFAULT_TOML.read_text(encoding="utf-8").splitlines()
    for name in OPTION_NAMES:
        index = next((i for i, line in enumerate(lines) if re.match(rf"#? ?{name} = ", line)), None)
        assert index is not None, name
        assert lines[index - 1].startswith("# "), name


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://localhost:1", True),
        ("http://[::1]:1", True),
        ("https://api.cekura.ai", True),
        ("http://api.cekura.ai", False),
        ("http://10.1.2.3", False),
    ],
    ids=["loopback-v4", "localhost", "loopback-v6", "https", "remote-http", "private-http"],
)
def test_plain_http_only_to_loopback(url: str, allowed: bool) -> None:
    """A plain http:// base URL is refused unless it is loopback or --allow-insecure-http."""
    env = {"CEKURA_API_KEY": KEY}
    if allowed:
        assert load_settings({"base_url": url}, env, None, None).base_url == url
        return
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        load_settings({"base_url": url}, env, None, None)
    opened = load_settings({"base_url": url, "allow_insecure_http": True}, env, None, None)
    assert opened.base_url == url


def test_api_url_from_the_cekura_cli_file_sits_below_batchpoll_settings(tmp_path: Path) -> None:
    """api_url in ~/.cekura/config.toml sets base_url unless a flag, env or file does."""
    write(
        tmp_path / ".cekura" / "config.toml",
        f'api_key = "{KEY}"\napi_url = "https://eu.cekura.test/"\n',
    )
    settings = load_settings({}, {}, None, None, home=tmp_path)
    assert settings.base_url == "https://eu.cekura.test"
    assert settings.sources["base_url"] == "~/.cekura/config.toml"
    env = {"CEKURA_API_URL": "https://us.cekura.test"}
    assert load_settings({}, env, None, None, home=tmp_path).base_url == "https://us.cekura.test"


def test_oauth_only_cekura_file_says_an_api_key_is_needed(tmp_path: Path) -> None:
    """A Cekura CLI file with only OAuth tokens gets a message saying to use an API key."""
    write(tmp_path / ".cekura" / "config.toml", 'access_token = "t"\nrefresh_token = "r"\n')
    with pytest.raises(ConfigError, match="only OAuth tokens") as info:
        load_settings({}, {}, None, None, home=tmp_path)
    assert "CEKURA_API_KEY" in str(info.value)


def test_a_cekura_file_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    """A world- or group-readable ~/.cekura/config.toml yields a warning naming chmod 600."""
    path = tmp_path / ".cekura" / "config.toml"
    write(path, f'api_key = "{KEY}"\n')
    path.chmod(0o644)
    (warning,) = load_settings({}, {}, None, None, home=tmp_path).warnings
    assert "chmod 600" in warning
    path.chmod(0o600)
    assert load_settings({}, {}, None, None, home=tmp_path).warnings == ()


@pytest.mark.parametrize("name", ["default", "nightly", "ci"])
def test_every_preset_loads_and_says_what_each_key_does(tmp_path: Path, name: str) -> None:
    """Each preset in configs/ loads cleanly, and every key in it has a comment above it."""
    path = DEFAULT_TOML.parent / f"{name}.toml"
    settings = load_settings({}, {}, str(path), None, home=tmp_path, require_key=False)
    assert all(source in ("default", f"file {path}") for source in settings.sources.values())
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+ = ", line):
            above = next(prev for prev in reversed(lines[:i]) if not re.match(r"\w+ = ", prev))
            assert above.startswith("#"), line


def test_ci_preset_fails_on_everything_but_completed(tmp_path: Path) -> None:
    """The CI preset fails the build for every status except completed, and writes JUnit."""
    path = DEFAULT_TOML.parent / "ci.toml"
    settings = load_settings({}, {}, str(path), None, home=tmp_path, require_key=False)
    assert settings.fail_on == ALL_STATUSES - {"completed"}
    assert settings.junit is not None
    assert settings.deadline is not None


# -- sharding and the shared rate store ---------------------------------------------------------

K8S = "env JOB_COMPLETION_INDEX/BATCHPOLL_SHARDS"


@pytest.mark.parametrize(
    ("flags", "env", "toml", "expected", "source"),
    [
        ({"shard": "2/3"}, {"BATCHPOLL_SHARD": "1/3"}, "", Shard(index=2, count=3), "flag --shard"),
        ({}, {"BATCHPOLL_SHARD": "1/3"}, 'shard = "0/3"', Shard(index=1, count=3), "env"),
        ({}, {}, 'shard = "0/3"', Shard(index=0, count=3), "file"),
        (
            {},
            {"JOB_COMPLETION_INDEX": "4", "BATCHPOLL_SHARDS": "5"},
            "",
            Shard(index=4, count=5),
            K8S,
        ),
        (
            {},
            {"JOB_COMPLETION_INDEX": "4", "BATCHPOLL_SHARDS": "5"},
            'shard = "0/2"',
            Shard(index=0, count=2),
            "file",
        ),
        (
            {},
            {"BATCHPOLL_SHARD": "1/2", "JOB_COMPLETION_INDEX": "4", "BATCHPOLL_SHARDS": "5"},
            "",
            Shard(index=1, count=2),
            "env",
        ),
        (
            {"shard": "none"},
            {"JOB_COMPLETION_INDEX": "4", "BATCHPOLL_SHARDS": "5"},
            "",
            None,
            "flag",
        ),
        ({}, {"JOB_COMPLETION_INDEX": "4"}, "", None, "default"),
        ({}, {}, "", None, "default"),
    ],
    ids=[
        "flag-beats-env",
        "env-beats-file",
        "file",
        "kubernetes-pair",
        "file-beats-kubernetes",
        "batchpoll-shard-beats-kubernetes",
        "flag-none-beats-kubernetes",
        "index-alone-is-no-shard",
        "default-none",
    ],
)
def test_shard_precedence(
    tmp_path: Path,
    flags: dict[str, object],
    env: dict[str, str],
    toml: str,
    expected: Shard | None,
    source: str,
) -> None:
    """shard: flag > BATCHPOLL_SHARD > file > the Kubernetes index pair > none."""
    settings = load(tmp_path, flags=flags, env=env, toml=toml)
    assert settings.shard == expected
    assert settings.sources["shard"].startswith(source)


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({"BATCHPOLL_SHARD": "3/3"}, "", r"^shard='3/3' \(from env BATCHPOLL_SHARD\): .*0 to 2"),
        ({"BATCHPOLL_SHARD": "1-3"}, "", r"^shard='1-3' \(from env BATCHPOLL_SHARD\): must be K/N"),
        ({"BATCHPOLL_SHARD": "0/0"}, "", r"N=0 leaves no shard"),
        ({}, "shard = 3", r"^shard=3 \(from file .*\): must be a string"),
        (
            {"JOB_COMPLETION_INDEX": "3", "BATCHPOLL_SHARDS": "3"},
            "",
            rf"^shard=.3/3. \(from {K8S}\): JOB_COMPLETION_INDEX must be below BATCHPOLL_SHARDS=3",
        ),
        (
            {"BATCHPOLL_SHARDS": "3"},
            "",
            r"^shard='/3' .*: BATCHPOLL_SHARDS is set but JOB_COMPLETION_INDEX is not",
        ),
        (
            {"JOB_COMPLETION_INDEX": "1", "BATCHPOLL_SHARDS": "zero"},
            "",
            r"^shard='1/zero' .*: BATCHPOLL_SHARDS must be a whole number from 1 to 100000",
        ),
    ],
    ids=[
        "k-too-big",
        "no-slash",
        "n-zero",
        "toml-int",
        "index-too-big",
        "count-alone",
        "bad-count",
    ],
)
def test_bad_shards_name_value_and_source(
    tmp_path: Path, env: dict[str, str], toml: str, message: str
) -> None:
    """A bad shard, from any source, is a ConfigError saying what K/N must be."""
    with pytest.raises(ConfigError, match=message) as caught:
        load(tmp_path, env=env, toml=toml)
    assert caught.value.key == "shard"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://redis",
        "rediss://user:pw@cache.example.test:6380/2",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_rate_store_takes_redis_urls(tmp_path: Path, url: str) -> None:
    """rate_store takes redis://, rediss:// and unix:// URLs, with rate_key defaulting."""
    settings = load(tmp_path, env={"BATCHPOLL_RATE_STORE": url})
    assert settings.rate_store == url
    assert settings.rate_key == "batchpoll"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:6379", "must be a redis://, rediss:// or unix:// URL"),
        ("redis://:6379/0", "must name a host"),
        ("redis://h:99999/0", "is not a valid URL"),
        ("redis://h:6379/zero", "must end in /DB"),
        ("unix://", "must name a socket path"),
        ("redis://h/0#x", "must not have a fragment"),
        ("", "must not be empty"),
    ],
    ids=["http", "no-host", "bad-port", "bad-db", "unix-no-path", "fragment", "empty"],
)
def test_bad_rate_store_is_refused(tmp_path: Path, url: str, problem: str) -> None:
    """A rate_store that is not a usable Redis URL is a ConfigError saying why."""
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load(tmp_path, flags={"rate_store": url})
    assert caught.value.key == "rate_store"


def test_rate_store_password_never_shows(tmp_path: Path) -> None:
    """A password in rate_store is masked in errors, describe() and repr(settings)."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={"rate_store": "http://:hunter2@h/0"})
    assert "hunter2" not in str(caught.value)
    assert "http://:***@h/0" in str(caught.value)
    settings = load(tmp_path, env={"BATCHPOLL_RATE_STORE": "redis://u:hunter2@h:1/0"})
    assert describe(settings)["rate_store"] == "redis://u:***@h:1/0"
    assert "hunter2" not in repr(settings)


def test_password_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    """A password in --rate-store gets a warning (argv is public); from env it does not."""
    url = "redis://:pw@h:1/0"
    (warning,) = load(tmp_path, flags={"rate_store": url}).warnings
    assert "BATCHPOLL_RATE_STORE" in warning
    assert "pw@" not in warning
    assert load(tmp_path, env={"BATCHPOLL_RATE_STORE": url}).warnings == ()
    assert load(tmp_path, flags={"rate_store": "redis://h:1/0"}).warnings == ()


def test_shards_without_a_store_are_warned_about(tmp_path: Path) -> None:
    """Shards without a rate_store are told that each process keeps its own budget."""
    (warning,) = load(tmp_path, env={"BATCHPOLL_SHARD": "0/3"}).warnings
    assert "3 x rate" in warning
    shared = {"BATCHPOLL_SHARD": "0/3", "BATCHPOLL_RATE_STORE": "redis://h/0"}
    assert load(tmp_path, env=shared).warnings == ()
    assert load(tmp_path, env={"BATCHPOLL_SHARD": "0/1"}).warnings == ()


def test_describe_shows_the_shard_as_text(tmp_path: Path) -> None:
    """describe() gives the shard as K/N, and rate_key as it is."""
    settings = load(tmp_path, env={"BATCHPOLL_SHARD": "1/4", "BATCHPOLL_RATE_KEY": "nightly"})
    described = describe(settings)
    assert (described["shard"], described["rate_key"]) == ("1/4", "nightly")
    assert describe(Settings())["shard"] is None


def test_empty_rate_key_is_refused(tmp_path: Path) -> None:
    """rate_key must name a key."""
    with pytest.raises(ConfigError, match="must not be empty"):
        load(tmp_path, toml='rate_key = " "')


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate", "1e-320"),
        ("rate", "1000001"),
        ("concurrency", "10001"),
        ("burst", "10001"),
        ("interval", "0.0001"),
        ("max_interval", "1e300"),
        ("timeout", "31536001"),
        ("deadline", "1e-9"),
        ("request_timeout", "0.0009"),
        ("max_retries", "1001"),
    ],
    ids=lambda v: str(v),
)
def test_absurd_numbers_are_refused_at_start(tmp_path: Path, name: str, value: str) -> None:
    """A number beyond its option's bounds is a ConfigError naming key, value and source."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={name: value})
    flag = "--" + name.replace("_", "-")
    assert str(caught.value).startswith(f"{name}={value!r} (from flag {flag}): must be between")


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    """Each bound is a valid value: a millisecond, a year, the lowest and highest rates."""
    low = load(tmp_path, flags={"rate": "0.001", "interval": "0.001", "request_timeout": "0.001"})
    high = load(
        tmp_path,
        flags={
            "rate": "1000000",
            "burst": "10000",
            "concurrency": "10000",
            "max_retries": "1000",
            "timeout": "31536000",
            "deadline": "31536000",
            "max_interval": "31536000",
        },
    )
    assert (low.rate, low.interval, low.request_timeout) == (0.001, 0.001, 0.001)
    assert (high.rate, high.burst, high.concurrency, high.deadline) == (1e6, 10000, 10000, 31536000)


@pytest.mark.parametrize(
    "where",
    ["flag", "env CEKURA_API_URL", "env BATCHPOLL_BASE_URL", "file", "cekura file"],
)
def test_a_password_in_base_url_never_shows(tmp_path: Path, where: str) -> None:
    """A base URL holding user:password is refused from every source with the password masked."""
    url = "https://alice:hunter2-pw@api.example.test"
    flags, env, toml = {}, {}, None
    if where == "flag":
        flags = {"base_url": url}
    elif where.startswith("env "):
        env = {where.removeprefix("env "): url}
    elif where == "file":
        toml = f'base_url = "{url}"'
    else:
        write(tmp_path / ".cekura" / "config.toml", f'api_url = "{url}"\n')
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags=flags, env=env, toml=toml)
    assert "hunter2-pw" not in str(caught.value)
    assert "alice:***@api.example.test" in str(caught.value)


def test_a_plain_http_url_with_a_password_is_masked_too(tmp_path: Path) -> None:
    """The clear-text check names base_url with any password masked (here in the user part)."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={"CEKURA_API_URL": "http://hunter2-pw@api.example.test:8080"})
    assert "hunter2-pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        ({"rate": KEY}, {}),
        ({"log_level": KEY}, {}),
        ({}, {"BATCHPOLL_RESUME": KEY}),
        ({"shard": KEY}, {}),
        ({"rate_store": f"redis://:{KEY}@h:6379/x"}, {}),
        ({"base_url": f"{KEY}@api.example.test"}, {}),
    ],
    ids=["rate", "log-level", "env-bool", "shard", "store-password", "url-without-scheme"],
)
def test_a_key_given_to_the_wrong_option_is_not_echoed(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str]
) -> None:
    """A key-shaped value or a URL password given to any option is hidden in the error."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags=flags, env=env)
    assert KEY not in str(caught.value)


def test_a_key_given_as_the_key_file_path_is_not_echoed(tmp_path: Path) -> None:
    """--api-key-file KEY (the key, not a path) is refused without showing it, saying why."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, key_file=KEY)
    assert KEY not in str(caught.value)
    assert "takes the PATH of a file" in str(caught.value)


def test_long_values_are_cut_short_in_messages(tmp_path: Path) -> None:
    """A value of unbounded length shows its first 100 characters and how long it was."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags={"log_format": "x" * 5000})
    message = str(caught.value)
    assert "x" * 100 + "...[5000 characters in all]" in message
    assert len(message) < 300


def test_unknown_batchpoll_env_vars_are_warned_about_by_name(tmp_path: Path) -> None:
    """A misspelt BATCHPOLL_* variable is a warning naming it and the near miss, never its value."""
    settings = load(tmp_path, env={"BATCHPOLL_RAT": "5", "BATCHPOLL_ZZZQ": KEY})
    assert settings.rate == 10.0
    assert settings.warnings == (
        "environment variable BATCHPOLL_RAT is not a batchpoll setting; "
        "did you mean BATCHPOLL_RATE?",
        "environment variable BATCHPOLL_ZZZQ is not a batchpoll setting",
    )


def test_every_variable_batchpoll_reads_is_known(tmp_path: Path) -> None:
    """No warning for the option variables, the shard count or the loop choice."""
    env = {f"BATCHPOLL_{name.upper()}": "" for name in OPTION_NAMES}
    env |= {"BATCHPOLL_API_KEY_FILE": "", "BATCHPOLL_SHARDS": "", "BATCHPOLL_LOOP": "asyncio"}
    assert load(tmp_path, env=env).warnings == ()


@pytest.mark.parametrize("key", ["k", "abc1234"])
def test_a_key_too_short_to_mask_safely_is_refused(key: str) -> None:
    """A key under MIN_KEY_CHARS is refused: masking it would mask ordinary text everywhere."""
    with pytest.raises(ConfigError, match="at least 8") as caught:
        load_settings({}, {"CEKURA_API_KEY": key}, None, None)
    assert str(caught.value).startswith("api_key=Secret('***')")


SECRET_KEY = "sk_live_SECRETKEY123456"
UUID_KEY = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"


@pytest.mark.parametrize(
    ("flags", "env", "toml"),
    [
        ({"fail_on": SECRET_KEY}, {}, None),
        ({"fail_on": f"failed,{UUID_KEY}"}, {}, None),
        ({}, {}, f'fail_on = ["{SECRET_KEY}"]'),
        ({}, {"BATCHPOLL_RETRY_STATUSES": "x" * 5000}, None),
        ({}, {"BATCHPOLL_SHARDS": SECRET_KEY}, None),
        ({}, {"JOB_COMPLETION_INDEX": SECRET_KEY, "BATCHPOLL_SHARDS": "2"}, None),
        ({}, {"JOB_COMPLETION_INDEX": "0", "BATCHPOLL_SHARDS": "9" * 5000}, None),
    ],
    ids=["fail-on-key", "fail-on-uuid", "toml-fail-on-key", "long-status", "shards-key",
         "index-key", "shards-5000-digits"],
)  # fmt: skip
def test_problem_text_never_echoes_a_key_or_a_long_value(
    tmp_path: Path, flags: dict[str, object], env: dict[str, str], toml: str | None
) -> None:
    """A key or 5,000 characters in a status list or shard variable is masked in the problem too."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, flags=flags, env=env, toml=toml)
    message = str(caught.value)
    for secret in (SECRET_KEY, UUID_KEY, "x" * 101, "9" * 101):
        assert secret.lower() not in message.lower()
    assert len(message) < 600


def test_many_unknown_statuses_are_counted_past_five(tmp_path: Path) -> None:
    """3,000 unknown statuses name the first five and count the rest."""
    statuses = ",".join(f"s{i}" for i in range(3000))
    with pytest.raises(
        ConfigError, match=r"unknown status s0, s1, s10, s100, s1000, and 2995 more"
    ):
        load(tmp_path, flags={"fail_on": statuses})
