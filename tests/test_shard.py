"""Shards: every id owned by exactly one of N, by a hash that never changes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping

import pytest
from helpers import items_of
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpoll._core.shard import MAX_SHARDS, Shard, owned, parse_shard, shard_from_env, shard_of
from batchpoll._core.source import InvalidInput, Item

pytestmark = pytest.mark.anyio

FAST = settings(max_examples=300, deadline=None)


@FAST
@given(st.lists(st.text(min_size=1, max_size=64), min_size=1, max_size=50), st.integers(1, 16))
def test_exactly_one_of_n_shards_owns_each_id(ids: list[str], count: int) -> None:
    """For any ids and any N in 1..16, exactly one of the shards 0/N..N-1/N owns each id."""
    shards = [Shard(index=k, count=count) for k in range(count)]
    for pid in ids:
        assert sum(shard.owns(pid) for shard in shards) == 1


@FAST
@given(st.text(max_size=64), st.integers(1, 1000))
def test_owner_is_the_hash_modulo_n(pid: str, count: int) -> None:
    """The owner is blake2b-64 of the UTF-8 id, big-endian, modulo N."""
    import hashlib

    digest = hashlib.blake2b(pid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    assert shard_of(pid, count) == int.from_bytes(digest, "big") % count


# (id, blake2b-64 as hex, owner for N = 2, 3, 7, 16). Pinned: if these change, shards of
# different versions would split one input differently and poll ids twice or never. The hex is
# what `printf %s ID | b2sum -l 64` prints too.
VECTORS = [
    ("abc", "d8bb14d833d59559", (1, 1, 2, 9)),
    ("progress-1", "318723019e35c8d3", (1, 2, 0, 3)),
    ("int-0", "0f3738ae2bbec6ea", (0, 2, 6, 10)),
    ("7f3c2a10-9b1e-4c55-8d0e-2f6a1b3c4d5e", "5c4650e5a4003629", (1, 1, 3, 9)),
    ("é-ünïcode", "cad278a7e33891cf", (1, 2, 0, 15)),
]


@pytest.mark.parametrize(("pid", "digest", "owners"), VECTORS, ids=[v[0] for v in VECTORS])
def test_fixed_vectors_never_change(pid: str, digest: str, owners: tuple[int, ...]) -> None:
    """Known ids land on known shards, on every machine and Python version."""
    assert int(digest, 16) % 2 == owners[0]
    assert tuple(shard_of(pid, n) for n in (2, 3, 7, 16)) == owners
    for n, k in zip((2, 3, 7, 16), owners, strict=True):
        assert Shard(index=k, count=n).owns(pid)


def test_one_shard_owns_everything() -> None:
    """0/1 owns every id, so a single process needs no special case."""
    assert all(Shard(index=0, count=1).owns(f"id-{i}") for i in range(100))


def test_shards_split_ids_roughly_evenly() -> None:
    """Over 3,000 ids each of 3 shards gets about a third (the hash spreads, not clusters)."""
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"progress-{i}", 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0/1", (0, 1)),
        ("2/3", (2, 3)),
        (" 1 / 4 ", (1, 4)),
        ("07/10", (7, 10)),
        ("99999/100000", (99_999, 100_000)),
        ("0" * 5000 + "1/" + "0" * 5000 + "2", (1, 2)),
    ],
)
def test_parse_shard_reads_k_slash_n(text: str, expected: tuple[int, int]) -> None:
    """K/N parses, with spaces and leading zeros allowed, and prints back as K/N."""
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected
    assert str(shard) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/3", "numbered 0 to 2"),
        ("5/3", "numbered 0 to 2"),
        ("0/0", "N=0 leaves no shard"),
        ("-1/3", "must be K/N"),
        ("1", "must be K/N"),
        ("1/2/3", "must be K/N"),
        ("a/b", "must be K/N"),
        ("1.0/3", "must be K/N"),
        ("", "must be K/N"),
        ("\uff11/\uff13", "must be K/N"),  # full-width digits are not ASCII digits
    ],
)
def test_parse_shard_rejects_with_a_clear_message(text: str, message: str) -> None:
    """Anything but K/N with 0 <= K < N is a ValueError saying what was expected."""
    with pytest.raises(ValueError, match=message):
        parse_shard(text)


BIG = "9" * 5000  # int() refuses 4,300 digits and more with a message of its own


@pytest.mark.parametrize(
    "text",
    ["1/100001", "1/99999999999999999999999999999", f"0/{BIG}", f"{BIG}/{BIG}"],
    ids=["just-over", "thirty-digits", "5000-digits", "both-5000-digits"],
)
def test_parse_shard_refuses_more_than_max_shards(text: str) -> None:
    """N above 100,000 is refused, however many digits, without quoting the number."""
    with pytest.raises(ValueError, match=f"N must be at most {MAX_SHARDS} shards") as caught:
        parse_shard(text)
    assert "99999" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"BATCHPOLL_SHARD": f"1/{BIG}"},
        {"JOB_COMPLETION_INDEX": "0", "BATCHPOLL_SHARDS": BIG},
        {"JOB_COMPLETION_INDEX": "0", "BATCHPOLL_SHARDS": "100001"},
        {"JOB_COMPLETION_INDEX": BIG, "BATCHPOLL_SHARDS": "4"},
        {"JOB_COMPLETION_INDEX": "sk_live_SECRETKEY123456", "BATCHPOLL_SHARDS": "4"},
        {"JOB_COMPLETION_INDEX": "0", "BATCHPOLL_SHARDS": "sk_live_SECRETKEY123456"},
        {"BATCHPOLL_SHARDS": "sk_live_SECRETKEY123456"},
    ],
    ids=["shard-huge-n", "count-huge", "count-over", "index-huge", "index-key", "count-key",
         "count-alone-key"],
)  # fmt: skip
def test_shard_from_env_names_variables_never_their_values(env: Mapping[str, str]) -> None:
    """A bad shard variable (a key, 5,000 digits, N over the bound) is named, never quoted."""
    with pytest.raises(ValueError, match=r"BATCHPOLL_SHARD|JOB_COMPLETION_INDEX") as caught:
        shard_from_env(env)
    message = str(caught.value)
    assert "SECRETKEY" not in message
    assert "99999" not in message
    assert len(message) < 200


def test_shard_checks_its_fields() -> None:
    """A Shard made directly is checked too, and is frozen."""
    with pytest.raises(ValueError, match="0 to N-1=2"):
        Shard(index=3, count=3)
    with pytest.raises(ValueError, match="count must be >= 1"):
        Shard(index=0, count=0)
    with pytest.raises(ValueError, match="at most 100000"):
        Shard(index=0, count=MAX_SHARDS + 1)
    with pytest.raises(TypeError, match="integer"):
        Shard(index=True, count=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Shard(index=0, count=2).index = 1  # type: ignore[misc]  # proving it is frozen


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"BATCHPOLL_SHARD": "1/3"}, Shard(index=1, count=3)),
        ({"BATCHPOLL_SHARD": ""}, None),
        ({"JOB_COMPLETION_INDEX": "2", "BATCHPOLL_SHARDS": "4"}, Shard(index=2, count=4)),
        ({"JOB_COMPLETION_INDEX": "2"}, None),
        (
            {"BATCHPOLL_SHARD": "0/2", "JOB_COMPLETION_INDEX": "2", "BATCHPOLL_SHARDS": "4"},
            Shard(index=0, count=2),
        ),
    ],
    ids=["nothing", "batchpoll-shard", "empty", "kubernetes", "index-alone", "shard-wins"],
)
def test_shard_from_env(env: Mapping[str, str], expected: Shard | None) -> None:
    """BATCHPOLL_SHARD, else JOB_COMPLETION_INDEX with BATCHPOLL_SHARDS, else no shard."""
    assert shard_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BATCHPOLL_SHARD": "4/4"}, r"^BATCHPOLL_SHARD: .*numbered 0 to 3"),
        ({"BATCHPOLL_SHARDS": "4"}, "is set but JOB_COMPLETION_INDEX is not"),
        ({"JOB_COMPLETION_INDEX": "4", "BATCHPOLL_SHARDS": "4"}, "must be below BATCHPOLL_SHARDS"),
        ({"JOB_COMPLETION_INDEX": "-1", "BATCHPOLL_SHARDS": "4"}, "whole number >= 0"),
        ({"JOB_COMPLETION_INDEX": "0", "BATCHPOLL_SHARDS": "0"}, "whole number from 1 to 100000"),
    ],
    ids=["k-too-big", "count-alone", "index-too-big", "negative-index", "zero-count"],
)
def test_shard_from_env_rejects_bad_values(env: Mapping[str, str], message: str) -> None:
    """A bad shard in the environment is a ValueError naming the variable."""
    with pytest.raises(ValueError, match=message):
        shard_from_env(env)


async def collect(items: AsyncIterator[Item]) -> list[Item]:
    return [item async for item in items]


async def test_owned_keeps_only_the_shards_items_in_order() -> None:
    """owned() passes on this shard's ids and invalid lines in input order; None passes all."""
    lines = [f"id-{i}" for i in range(60)] + ["has space", "x" * 300]
    everything = await collect(owned(items_of(lines), None))
    assert len(everything) == len(lines)
    parts = [await collect(owned(items_of(lines), Shard(index=k, count=3))) for k in range(3)]
    for part in parts:
        assert part == [item for item in everything if item in part]  # input order kept
    merged = [item for part in parts for item in part]
    assert sorted(map(text_of, merged)) == sorted(map(text_of, everything))
    invalid = [item for item in merged if isinstance(item, InvalidInput)]
    assert len(invalid) == 2  # each invalid line written by exactly one shard


def text_of(item: Item) -> str:
    return item if isinstance(item, str) else item.text
