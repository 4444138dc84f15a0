"""Secrets masked out of what batchpoll writes: the key echoed in a URL, a header or a JSON body;
passwords in URLs; values a message may show."""

from __future__ import annotations

import orjson
import pytest

from batchpoll._core.redact import (
    HIDDEN,
    MASK,
    SHOWN_CHARS,
    Secret,
    json_needle,
    mask_exact,
    mask_text,
    mask_value,
    masked_record,
    masked_url,
    shown,
)
from batchpoll.records import Record

KEY = "sk_live_0123456789abcdef"


def test_secret_hides_its_value() -> None:
    """A Secret prints as *** yet compares and reveals by value."""
    secret = Secret(KEY)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == f"{secret}" == "***"
    assert secret.reveal() == KEY
    assert secret == Secret(KEY)
    assert secret != Secret("other")
    assert secret != KEY
    assert hash(secret) == hash(Secret(KEY))
    assert not hasattr(secret, "__dict__")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        ("redis://pw@h", "redis://***@h"),
        ("redis://:p/w@h/0", "redis://:***@h/0"),
        ("unix:///r.sock?db=0&password=pw", "unix:///r.sock?db=0&password=***"),
    ],
    ids=["none", "password", "user-and-password", "user-part-only", "unescaped-slash", "query"],
)
def test_masked_url_hides_passwords(url: str, masked: str) -> None:
    """masked_url replaces a password (or a user part without one) by ***, nothing else."""
    assert masked_url(url) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"GET /p?progress_id=a&api_key={KEY}", "GET /p?progress_id=a&api_key=***"),
        (f"https://api.test/p?k={KEY}&k2={KEY}#{KEY}", "https://api.test/p?k=***&k2=***#***"),
        (f"http://{KEY.lower()}.example/p", "http://***.example/p"),
        (f"X-CEKURA-API-KEY: {KEY.upper()}", "X-CEKURA-API-KEY: ***"),
        ("GET /p?progress_id=a", "GET /p?progress_id=a"),
    ],
    ids=["query", "query-twice-and-fragment", "lowercased-host", "header-uppercased", "no-key"],
)
def test_mask_text_masks_the_key_in_any_case(text: str, masked: str) -> None:
    """Every occurrence of the key, in any letter case, becomes ***; the rest is kept."""
    assert mask_text(text, KEY) == masked


def test_mask_exact_masks_the_key_as_written_only() -> None:
    """mask_exact masks each occurrence as written and, unlike mask_text, not another case."""
    assert mask_exact(f"a{KEY}b{KEY}", KEY) == f"a{MASK}b{MASK}"
    assert mask_exact(KEY.upper(), KEY) == KEY.upper()


def test_mask_text_without_a_key_changes_nothing() -> None:
    """With no key (None) the text comes back as it was, even text holding a key-like word."""
    text = f"GET /p?api_key={KEY}"
    assert mask_text(text, None) is text


def test_mask_value_masks_a_key_echoed_in_headers() -> None:
    """Header values holding the key are masked, a header named by the key too; names and
    other values are kept, and a non-string dict key is left as it is."""
    headers = {
        "X-CEKURA-API-KEY": KEY,
        "Authorization": f"Bearer {KEY}",
        KEY: "echoed as a name",
        "Content-Type": "application/json",
        7: KEY,
    }
    assert mask_value(headers, KEY) == {
        "X-CEKURA-API-KEY": MASK,
        "Authorization": f"Bearer {MASK}",
        MASK: "echoed as a name",
        "Content-Type": "application/json",
        7: MASK,
    }


def test_mask_value_masks_a_key_echoed_in_a_json_body() -> None:
    """A key anywhere in a decoded JSON body (nested values, lists, keys) is masked; numbers,
    booleans, null and strings without it are kept."""
    body = orjson.dumps(
        {
            "progress_id": "p1",
            "error": f"invalid key {KEY}",
            "result": {"echo": [KEY, 1, 2.5, True, None], "deep": {"k": f"<{KEY}>"}},
        }
    )
    assert mask_value(orjson.loads(body), KEY) == {
        "progress_id": "p1",
        "error": f"invalid key {MASK}",
        "result": {"echo": [MASK, 1, 2.5, True, None], "deep": {"k": f"<{MASK}>"}},
    }


def test_mask_value_leaves_other_objects_unless_asked() -> None:
    """An object that is no JSON value passes untouched; with objects=True one whose text
    holds the key becomes that text masked, and one whose text does not is kept as it is."""
    error, clean = ValueError(f"bad key {KEY}"), ValueError("timeout")
    assert mask_value(error, KEY) is error
    assert mask_value([error, clean], KEY, objects=True) == [f"bad key {MASK}", clean]
    assert mask_value({"exc": (error,)}, KEY, objects=True) == {"exc": [f"bad key {MASK}"]}


def test_mask_value_never_turns_numbers_into_text() -> None:
    """A key of digits masks strings, never a number whose digits hold it."""
    digits = "12345678"
    assert mask_value([123456789, 1.2345678e9, f"n{digits}"], digits, objects=True) == [
        123456789,
        1.2345678e9,
        f"n{MASK}",
    ]


@pytest.mark.parametrize(
    "secret",
    [KEY, 'q"uo\\te-123', "ümlaut-key", "tab\tkey-1"],
    ids=["plain", "escapes", "utf8", "tab"],
)
def test_json_needle_is_how_the_key_reads_in_a_json_line(secret: str) -> None:
    """The needle is found in a JSON line holding the key, and not once the key is masked."""
    value = {"error": f"x{secret}y"}
    assert json_needle(secret) in orjson.dumps(value)
    assert json_needle(secret) not in orjson.dumps(mask_value(value, secret))


def test_masked_record_masks_every_text_field() -> None:
    """The key is masked in the id, mode, result, error and last API status; the status and
    the counts are kept."""
    record = Record(
        progress_id=f"id-{KEY}",
        status="failed",
        mode=KEY,
        result={KEY: [KEY]},
        error=f"echo {KEY}",
        polls=3,
        last_api_status=f"s{KEY}",
    )
    assert masked_record(record, KEY) == Record(
        progress_id=f"id-{MASK}",
        status="failed",
        mode=MASK,
        result={MASK: [MASK]},
        error=f"echo {MASK}",
        polls=3,
        last_api_status=f"s{MASK}",
    )


LONG = "x" * (SHOWN_CHARS + 50)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://u:hunter2@h:1/0", "redis://u:***@h:1/0"),
        (f"https://h.test/p?password={KEY}", "https://h.test/p?password=***"),
        ("admin@example.test", "***@example.test"),
        (KEY, HIDDEN),
        (f"  {KEY}\n", HIDDEN),
        ("results-2024.jsonl", "results-2024.jsonl"),
        ("12345678901234", "12345678901234"),
        (LONG, f"{'x' * SHOWN_CHARS}...[{len(LONG)} characters in all]"),
        ({"api_key": KEY}, "<a table of 1 keys>"),
        (["ok", KEY], ["ok", HIDDEN]),
        (list(range(11)), "<11 items>"),
        (3.5, 3.5),
    ],
    ids=[
        "url-password",
        "url-query-password",
        "user-at-host",
        "key-shaped",
        "key-shaped-padded",
        "file-name",
        "digits-only",
        "long",
        "table",
        "short-list",
        "long-list",
        "number",
    ],
)
def test_shown_masks_what_a_message_must_not_echo(value: object, expected: object) -> None:
    """A message shows a value with passwords masked, key-shaped words hidden, long text cut,
    tables by their size and long arrays by their length."""
    assert shown(value) == expected
