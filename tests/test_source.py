"""Input lines -> ids: the contract's Input section, streamed in chunks of any size."""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batchpoll._core.source import (
    MAX_LINE_BYTES,
    InvalidInput,
    Item,
    LineSplitter,
    aiter_items,
    id_problem,
    item_key,
    iter_items,
    parse_line,
)
from batchpoll.errors import InputFileError

FAST = settings(max_examples=200, deadline=None)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at offsets (modulo its length); a repeated offset makes an empty chunk."""
    bounds = sorted([0, len(data), *(c % (len(data) + 1) for c in cuts)])
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"abc", "abc"),
        (b"  abc\t\r\n", "abc"),
        ("\u3000id-1\u00a0".encode(), "id-1"),
        (b'{"progress_id": "p-1", "note": "x"}', "p-1"),
        ("π≈3.14".encode(), "π≈3.14"),
        (b"a" * 256, "a" * 256),
        (b"", None),
        (b" \t\r\n", None),
        (b"# a comment", None),
        (b"   #indented comment", None),
        (b"# not \xff UTF-8", None),
    ],
    ids=[
        "plain",
        "ascii-whitespace-trimmed",
        "unicode-whitespace-trimmed",
        "json",
        "non-ascii",
        "256-chars",
        "empty",
        "blank",
        "comment",
        "indented-comment",
        "comment-not-utf8",
    ],
)
def test_parse_line_accepts_or_skips(raw: bytes, expected: str | None) -> None:
    """A valid line gives its trimmed id; blank and comment lines give None."""
    assert parse_line(raw, 1) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"a" * 257, "id longer than 256 characters"),
        (b"a b", "id contains whitespace"),
        (b"a\tb", "id contains whitespace"),
        ("a\u200bb".encode(), "id contains a non-printable character"),
        (b"a\x00b", "id contains a non-printable character"),
        (b"ab\xffcd", "line is not valid UTF-8"),
        (b"{not json", "line is not valid JSON"),
        (b'{"id": "x"}', "JSON line without a string progress_id"),
        (b'{"progress_id": 42}', "progress_id must be a string"),
        (b'{"progress_id": null}', "progress_id must be a string"),
        (b'{"progress_id": ""}', "empty id"),
        (b'{"progress_id": " x"}', "id contains whitespace"),
        (b"x" * (MAX_LINE_BYTES + 1), f"line longer than {MAX_LINE_BYTES} bytes"),
    ],
    ids=[
        "too-long",
        "inner-space",
        "inner-tab",
        "zero-width-space",
        "nul",
        "bad-utf8",
        "bad-json",
        "json-no-progress-id",
        "json-int-id",
        "json-null-id",
        "json-empty-id",
        "json-id-not-trimmed",
        "line-over-1mib",
    ],
)
def test_parse_line_rejects(raw: bytes, reason: str) -> None:
    """An invalid line gives an InvalidInput naming why, with its line number."""
    item = parse_line(raw, 7)
    assert isinstance(item, InvalidInput)
    assert (item.reason, item.line_no) == (reason, 7)


def test_invalid_text_is_trimmed_and_shortened() -> None:
    """An InvalidInput keeps the trimmed line, shortened to at most 300 characters."""
    item = parse_line(b"  " + b"z" * 1000 + b"  \r\n", 1)
    assert isinstance(item, InvalidInput)
    assert len(item.text) == 300
    assert item.text.startswith("zzz")


def test_invalid_utf8_text_uses_replacement_characters() -> None:
    """A line that is not UTF-8 is reported with U+FFFD where the bad bytes were."""
    item = parse_line(b"ab\xffcd\n", 3)
    assert item == InvalidInput(text="ab\ufffdcd", reason="line is not valid UTF-8", line_no=3)


def test_bom_crlf_and_last_line_without_newline() -> None:
    """A leading BOM, CRLF endings and an unterminated last line are all accepted."""
    assert list(iter_items([b"\xef\xbb\xbfone\r\ntwo\r\nthree"])) == ["one", "two", "three"]


def test_bom_split_across_chunks() -> None:
    """A BOM cut between two chunks is still dropped."""
    assert list(iter_items([b"\xef", b"\xbb", b"\xbfone\n"])) == ["one"]


def test_bom_only_at_stream_start() -> None:
    """A BOM on a later line is not a BOM but an invalid character."""
    items = list(iter_items([b"one\n\xef\xbb\xbftwo\n"]))
    assert items[0] == "one"
    assert isinstance(items[1], InvalidInput)
    assert items[1].line_no == 2


def test_repeats_are_yielded_once() -> None:
    """A repeated id, in any spelling, and a repeated invalid line each come out once."""
    data = b'a\n a \n{"progress_id":"a"}\nb c\nb c\nd\n'
    items = list(iter_items([data]))
    assert items == ["a", InvalidInput(text="b c", reason="id contains whitespace", line_no=4), "d"]


def test_line_numbers_count_every_physical_line() -> None:
    """Line numbers count blank and comment lines too, starting at 1."""
    items = list(iter_items([b"\n# c\nok\n\nbad id\n"]))
    assert items[1] == InvalidInput(text="bad id", reason="id contains whitespace", line_no=5)


def test_splitter_bounds_an_endless_line() -> None:
    """A newline-free input is held to MAX_LINE_BYTES + 1 bytes, plus the SHA-256 of the rest."""
    splitter = LineSplitter()
    for _ in range(3):
        assert splitter.feed(b"x" * (MAX_LINE_BYTES // 2)) == []
    rest = b"x" * (3 * (MAX_LINE_BYTES // 2) - MAX_LINE_BYTES - 1) + b"yy"
    assert splitter.feed(b"yy\nok") == [b"x" * (MAX_LINE_BYTES + 1) + hashlib.sha256(rest).digest()]
    assert splitter.finish() == b"ok"
    assert splitter.finish() is None


@pytest.mark.anyio
async def test_aiter_items_matches_iter_items() -> None:
    """The async reader yields what the sync one does for the same chunks."""
    chunks = [b"\xef\xbb", b"\xbfa\r", b"\nb\n# c\nb\nbad id\nd"]

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    assert [item async for item in aiter_items(source())] == list(iter_items(chunks))


# Letters, marks, numbers, punctuation and symbols: printable and never whitespace.
_valid_ids = st.text(st.characters(exclude_categories=("C", "Z")), min_size=1, max_size=256).filter(
    lambda s: not s.startswith(("#", "{"))
)
_junk_lines = st.one_of(
    st.sampled_from([b"", b"   ", b"# comment", b"has space", b"{broken", b'{"progress_id":1}']),
    st.binary(max_size=40).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
    st.text(st.characters(exclude_categories=("C", "Z")), min_size=1, max_size=20).map(
        lambda s: (s + " \u00a0" + s).encode()
    ),
)


@FAST
@given(
    lines=st.lists(
        st.one_of(
            _valid_ids.map(lambda pid: ("id", pid)),
            _valid_ids.map(lambda pid: ("json", pid)),
            _junk_lines.map(lambda raw: ("junk", raw)),
        ),
        max_size=40,
    ),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    bom=st.booleans(),
    final_eol=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_every_valid_id_comes_out_once_in_order(
    lines: list[tuple[str, str | bytes]], eol: bytes, bom: bool, final_eol: bool, cuts: list[int]
) -> None:
    """However the input is chunked, each valid id comes out exactly once, in first-seen order."""
    encoded = []
    for kind, value in lines:
        if kind == "id":
            assert isinstance(value, str)
            encoded.append(f"  {value}\t".encode())
        elif kind == "json":
            encoded.append(orjson.dumps({"progress_id": value}))
        else:
            assert isinstance(value, bytes)
            encoded.append(value)
    data = (b"\xef\xbb\xbf" if bom else b"") + eol.join(encoded) + (eol if final_eol else b"")
    assume(not data.startswith((b"\xff\xfe", b"\xfe\xff")))  # UTF-16: refused, tested apart
    expected = list(dict.fromkeys(value for kind, value in lines if kind != "junk"))

    items = list(iter_items(chunked(data, cuts)))

    assert [item for item in items if isinstance(item, str)] == expected
    assert items == list(iter_items([data]))


@FAST
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_arbitrary_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    """Any bytes, cut anywhere, give valid ids or InvalidInputs with in-range line numbers,
    each key once, or for a UTF-16 start a clear InputFileError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        with pytest.raises(InputFileError, match="UTF-16"):
            list(iter_items(chunked(data, cuts)))
        return
    items: list[Item] = list(iter_items(chunked(data, cuts)))
    lines = data.count(b"\n") + 1
    for item in items:
        if isinstance(item, InvalidInput):
            assert 1 <= item.line_no <= lines
            assert len(item.text) <= 300
        else:
            assert 1 <= len(item) <= 256
            assert item.isprintable()
            assert not any(ch.isspace() for ch in item)
    keys = [item_key(item) for item in items]
    assert len(keys) == len(set(keys))


def test_whitespace_is_exactly_what_str_isspace_says() -> None:
    """Every code point inside an id is refused as whitespace if and only if isspace() says so."""
    wrong = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (id_problem(f"a{chr(code)}b") == "id contains whitespace") != chr(code).isspace()
    ]
    assert wrong == []


def test_utf16_input_is_refused_with_a_clear_error() -> None:
    """A UTF-16 file (BOM first) is an InputFileError saying so, not a line of junk each."""
    data = "id-1\nid-2\n".encode("utf-16")
    with pytest.raises(InputFileError, match="UTF-16"):
        list(iter_items([data]))


def test_an_id_holding_the_key_escaped_in_json_is_shown_masked() -> None:
    """A JSON line whose id holds the key through escapes is invalid and shown masked."""
    key = "sk_live_SECRETKEY123456"
    line = b'{"progress_id":"x-sk_live_SECRET\\u004bEY123456"}'
    (item,) = iter_items([line + b"\n"], forbidden=key)
    assert isinstance(item, InvalidInput)
    assert item.text == "x-***"
