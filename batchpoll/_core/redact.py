"""Secrets masked out of everything batchpoll writes, whoever put them there (pure).

A server may echo the key back (in a 400 body, a ``result``, an ``error``), and a careless user
may paste it into the ids file; either way it must not reach OUTPUT, a split file, the summary,
JUnit or a log. Masking a record's values is the one change batchpoll makes to a ``result``.
A value the user typed (a URL with a password, something shaped like a key) is masked in
every message that shows it (:func:`shown`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from typing import Any, Final

import orjson

from ..records import Record

MASK: Final = "***"


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
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time, so comparing keys leaks nothing through timing.
        import hmac  # here: a start-up cost no other command should pay

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


def mask_exact(text: str, secret: str) -> str:
    """*text* with every occurrence of *secret* (not empty), as written, as ``***``."""
    return text.replace(secret, MASK) if secret in text else text


def mask_value(value: Any, secret: str, *, objects: bool = False) -> Any:
    """*value* with every occurrence of *secret* in its strings (string dict keys too) as
    ``***``; *secret* must not be empty.

    Mappings become dicts and sequences lists; other objects pass untouched unless *objects*,
    when one whose ``str`` holds *secret* becomes that text, masked (a log event may carry an
    exception or a path). Numbers, booleans and None always pass untouched.
    """
    if isinstance(value, str):
        return mask_exact(value, secret)
    if isinstance(value, MutableMapping):
        return {
            (mask_value(k, secret) if isinstance(k, str) else k): mask_value(
                v, secret, objects=objects
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_value(v, secret, objects=objects) for v in value]
    if not objects or value is None or isinstance(value, int | float):  # bool is an int
        return value
    text = str(value)
    return mask_exact(text, secret) if secret in text else value


def mask_text(text: str, secret: str | None) -> str:
    """*text* with *secret* (None: no key, nothing to mask) masked in any letter case: for text
    a server or a library may have case-folded (yarl lowercases a URL's host), before it is
    cut short and the cut could leave a piece of the key."""
    if secret is None or secret.lower() not in text.lower():
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
