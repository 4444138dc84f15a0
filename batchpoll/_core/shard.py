"""Which ids one of N processes polls: a stable hash of the id, modulo N (pure).

``K/N`` owns the ids whose hash is K modulo N, so N processes reading the same input, shards
``0/N`` to ``N-1/N``, cover every id exactly once and their outputs concatenate to one record
per id. The hash is the first 8 bytes of BLAKE2b over the id's UTF-8 bytes, read big-endian: the
same on every machine, Python version and run (unlike ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final

from .source import Item, item_key

#: The environment variables a shard can come from, besides the ``--shard`` option itself.
SHARD_ENV: Final = "BATCHPOLL_SHARD"  # "K/N"
INDEX_ENV: Final = "JOB_COMPLETION_INDEX"  # set by Kubernetes on each pod of an Indexed Job
COUNT_ENV: Final = "BATCHPOLL_SHARDS"  # N, given alongside the Job's completion index

#: The most shards a job may be cut into. Far more than any fleet runs, and it keeps N a
#: small number: "1/99999999999999999999" would otherwise be a valid shard owning no id.
MAX_SHARDS: Final = 100_000
_MAX_DIGITS: Final = len(str(MAX_SHARDS))

_SHARD_TEXT: Final = re.compile(r"(\d+)\s*/\s*(\d+)", re.ASCII)
_FORM: Final = "must be K/N with whole numbers 0 <= K < N, like 0/3"
_TOO_MANY: Final = f"N must be at most {MAX_SHARDS} shards"


def shard_of(progress_id: str, count: int) -> int:
    """The shard (0 to ``count - 1``) that owns ``progress_id`` when there are ``count``."""
    # surrogatepass: an id holding a lone surrogate still hashes (the same way everywhere)
    # instead of raising; every other id is hashed as its plain UTF-8 bytes.
    digest = hashlib.blake2b(progress_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % count


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count); prints as ``index/count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"shard {name} must be an integer, not {type(value).__name__}")
        if self.count < 1:
            raise ValueError(f"shard count must be >= 1, not {self.count}")
        if self.count > MAX_SHARDS:
            raise ValueError(f"shard count: {_TOO_MANY}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count}: K must be from 0 to N-1={self.count - 1}"
            )

    def owns(self, progress_id: str) -> bool:
        """Whether this shard polls ``progress_id``: exactly one of the N shards does."""
        return shard_of(progress_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _number(digits: str) -> int | None:
    """The value of an ASCII digit string, or None when it is above ``MAX_SHARDS``.

    Counted before ``int()``, which refuses 4,300 digits and more with a message of its own.
    """
    digits = digits.lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS or int(digits) > MAX_SHARDS:
        return None
    return int(digits)


def parse_shard(text: str) -> Shard:
    """``"K/N"`` (spaces around the parts allowed, N at most ``MAX_SHARDS``) -> a Shard;
    ValueError says what is wrong, without quoting *text*."""
    match = _SHARD_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(_FORM)
    count = _number(match[2])
    if count is None:
        raise ValueError(f"{_FORM}; {_TOO_MANY}")
    if count < 1:
        raise ValueError(f"{_FORM}; N={count} leaves no shard")
    index = _number(match[1])  # None: above MAX_SHARDS, so at or above N too
    if index is None or index >= count:
        raise ValueError(f"{_FORM}; shards of {count} are numbered 0 to {count - 1}")
    return Shard(index=index, count=count)


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard the environment names, or None; an empty variable counts as unset.

    ``BATCHPOLL_SHARD="K/N"`` wins. Otherwise ``JOB_COMPLETION_INDEX`` (which Kubernetes sets on
    every pod of an Indexed Job) with ``BATCHPOLL_SHARDS=N`` gives shard K/N. The index alone
    is no shard (a Job may run batchpoll unsharded); ``BATCHPOLL_SHARDS`` alone is a mistake
    and raises ValueError, as does any value that is not a valid shard.

    The messages name the variables, never their values: a value may be anything (a key
    pasted into the wrong variable, a megabyte), and the caller shows it masked and cut.
    """
    if text := env.get(SHARD_ENV, "").strip():
        try:
            return parse_shard(text)
        except ValueError as exc:
            raise ValueError(f"{SHARD_ENV}: {exc}") from None
    count_text = env.get(COUNT_ENV, "").strip()
    index_text = env.get(INDEX_ENV, "").strip()
    if not count_text:
        return None
    if not index_text:
        raise ValueError(
            f"{COUNT_ENV} is set but {INDEX_ENV} is not: it comes from a "
            f"Kubernetes Indexed Job; elsewhere set {SHARD_ENV}=K/N"
        )
    if not (index_text.isascii() and index_text.isdigit()):
        raise ValueError(f"{INDEX_ENV} must be a whole number >= 0")
    count = _number(count_text) if count_text.isascii() and count_text.isdigit() else None
    if count is None or count < 1:
        raise ValueError(f"{COUNT_ENV} must be a whole number from 1 to {MAX_SHARDS}")
    index = _number(index_text)  # None: above MAX_SHARDS, so at or above the count too
    if index is None or index >= count:
        raise ValueError(
            f"{INDEX_ENV} must be below {COUNT_ENV}={count}: give the Job "
            f"completions: {count} with completionMode: Indexed"
        )
    return Shard(index=index, count=count)


async def owned(items: AsyncIterable[Item], shard: Shard | None) -> AsyncIterator[Item]:
    """The items of ``items`` that ``shard`` owns (all of them for None), in order.

    An invalid line is judged by its key (``source.item_key``), so its ``invalid_input`` record
    too is written by exactly one shard.
    """
    async for item in items:
        if shard is None or shard.owns(item_key(item)):
            yield item
