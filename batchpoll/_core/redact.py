"""The API key masked out of everything batchpoll writes, whoever put it there (pure).

A server may echo the key back (in a 400 body, a ``result``, an ``error``), and a careless user
may paste it into the ids file; either way it must not reach OUTPUT, a split file, the summary,
JUnit or a log. Masking a record's values is the one change batchpoll makes to a ``result``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Final

import orjson

from ..records import Record

MASK: Final = "***"


def mask_value(value: Any, secret: str) -> Any:
    """*value* with every occurrence of *secret* in its strings (dict keys too) as ``***``.

    JSON-like values are rebuilt only where something changed; other objects pass untouched.
    """
    if isinstance(value, str):
        return value.replace(secret, MASK) if secret in value else value
    if isinstance(value, dict):
        return {mask_value(k, secret): mask_value(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v, secret) for v in value]
    return value


def mask_text(text: str, secret: str) -> str:
    """*text* with *secret* masked in any letter case: for text a server or a library may have
    case-folded (yarl lowercases a URL's host), before it is cut short and the cut could
    leave a piece of the key."""
    if secret.lower() not in text.lower():
        return text
    return re.sub(re.escape(secret), MASK, text, flags=re.IGNORECASE)


def json_needle(secret: str) -> bytes:
    """How *secret* reads inside a JSON string as orjson writes it.

    orjson escapes character by character, so a string holding the secret serialises to text
    holding this: its absence from a line proves the line holds no secret.
    """
    return orjson.dumps(secret)[1:-1]


def masked_record(record: Record, secret: str) -> Record:
    """*record* with *secret* masked in every text field and in ``result``."""
    return replace(
        record,
        progress_id=mask_value(record.progress_id, secret),
        mode=mask_value(record.mode, secret),
        result=mask_value(record.result, secret),
        error=mask_value(record.error, secret),
        last_api_status=mask_value(record.last_api_status, secret),
    )
