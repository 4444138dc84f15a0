"""Input lines -> progress ids, streamed: one id per line, or a JSON object with a ``progress_id``.

The byte stream is cut into lines by ``LineSplitter``; ``Deduper`` numbers and parses them with
``parse_line`` and lets each distinct id through once. ``iter_items`` and ``aiter_items`` only wire
the two to a sync or an async chunk source, so memory stays at one chunk plus one partial line
(plus the set of ids seen, which de-duplication needs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

import orjson

from ..errors import InputFileError
from ..records import INVALID_KEY
from .redact import mask_exact

MAX_ID_CHARS: Final = 256
# What str.isspace calls whitespace (sre tests the same Unicode property), in one C call
# rather than a Python-level step per character: checked once for every id read.
_WHITESPACE: Final = re.compile(r"\s")
#: A line longer than this (in bytes, before trimming) is invalid whatever it holds; it bounds the
#: memory a newline-free input (a binary file given by mistake) can take.
MAX_LINE_BYTES: Final = 1 << 20
_MAX_TEXT_CHARS: Final = 300
_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True, slots=True)
class InvalidInput:
    """A line that names no valid id: its trimmed text (at most 300 characters), why, and where.

    ``sha256`` is the hex SHA-256 of the whole trimmed line, the part of its ``key`` that
    tells two invalid lines apart even when their shown text is the same.
    """

    text: str
    reason: str
    line_no: int
    sha256: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """What de-duplication and ``--resume`` know this line by (``records.record_key``)."""
        return INVALID_KEY + self.sha256


#: A valid progress id is a plain ``str``.
Item = str | InvalidInput


def item_key(item: Item) -> str:
    """The key of an id (itself) or of an invalid line; never the same for an id and a line."""
    return item if isinstance(item, str) else item.key


def parse_line(raw: bytes, line_no: int, forbidden: str | None = None) -> Item | None:
    """One input line (bytes, newline removed or not) -> an id, an InvalidInput, or None.

    None means a blank line or a ``#`` comment (judged after trimming, even if not valid UTF-8).
    ``line_no`` is 1-based and only copied into an InvalidInput. An id holding *forbidden*
    (the API key, pasted into the ids by mistake) is invalid: it is never sent, and an
    invalid line's text has it masked before the text is cut short.
    """
    if len(raw) > MAX_LINE_BYTES:
        head = raw[: _MAX_TEXT_CHARS * 4 + 4 * len(forbidden or "")]
        text = head.decode("utf-8", errors="replace").strip()
        return _invalid(text, f"line longer than {MAX_LINE_BYTES} bytes", line_no, raw, forbidden)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace").strip()
        if _skipped(text):
            return None
        return _invalid(text, "line is not valid UTF-8", line_no, raw, forbidden)
    if _skipped(text):
        return None
    pid, reason = _json_id(text) if text.startswith("{") else (text, id_problem(text))
    if reason is None and forbidden and forbidden in pid:
        reason = "id contains the API key, so it is never sent"
        # Shown as the id it names: a JSON line's escapes would hide the key from the mask.
        text = pid
    return pid if reason is None else _invalid(text, reason, line_no, raw, forbidden)


def _skipped(text: str) -> bool:
    return not text or text.startswith("#")


def _json_id(text: str) -> tuple[str, str | None]:
    """The id a JSON line names and None, or ``("", why it names no valid id)``."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "", "line is not valid JSON"
    if not isinstance(doc, dict) or "progress_id" not in doc:
        return "", "JSON line without a string progress_id"
    pid = doc["progress_id"]
    if not isinstance(pid, str):
        return "", "progress_id must be a string"
    # A JSON value is checked as it stands, not trimmed: quotes make its whitespace deliberate.
    return pid, id_problem(pid)


def id_problem(pid: str) -> str | None:
    """Why ``pid`` is not a valid id (1-256 printable characters, no whitespace), or None."""
    if not pid:
        return "empty id"
    if len(pid) > MAX_ID_CHARS:
        return f"id longer than {MAX_ID_CHARS} characters"
    if _WHITESPACE.search(pid):
        return "id contains whitespace"
    if not pid.isprintable():
        return "id contains a non-printable character"
    return None


def _invalid(
    text: str, reason: str, line_no: int, raw: bytes, forbidden: str | None = None
) -> InvalidInput:
    digest = hashlib.sha256(raw.strip()).hexdigest()
    if forbidden:
        text = mask_exact(text, forbidden)
    if len(text) > _MAX_TEXT_CHARS:
        text = text[: _MAX_TEXT_CHARS - 1] + "…"
    return InvalidInput(text=text, reason=reason, line_no=line_no, sha256=digest)


class LineSplitter:
    """Cuts a byte stream fed in arbitrary chunks into LF-ended lines (a CR before the LF is kept).

    A UTF-8 BOM is dropped from the stream's first line only. A line is cut off after
    ``MAX_LINE_BYTES + 1`` bytes, which still marks it as too long for ``parse_line``; the
    SHA-256 of what was cut off is appended, so two long lines that differ only past the cut
    still differ.
    """

    __slots__ = ("_first", "_overflow", "_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the partial line's pieces, MAX_LINE_BYTES + 1 bytes at most
        self._size = 0
        self._first = True
        self._overflow: hashlib._Hash | None = None  # what a too-long line had past the cut

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines that ``chunk`` completes, without their LF, in input order.

        Raises ``InputFileError`` for input that starts with a UTF-16 byte order mark (what
        Windows PowerShell 5 writes with ``>``): read as UTF-8, every line would be invalid.
        """
        *complete, rest = chunk.split(b"\n")
        lines = []
        for piece in complete:
            self._keep(piece)
            lines.append(self._take())
        self._keep(rest)
        return lines

    def finish(self) -> bytes | None:
        """The last line when the input did not end with LF, else None; the splitter is reset."""
        return self._take() if self._size or self._overflow is not None else None

    def _keep(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES + 1 - self._size
        if piece and room > 0:
            self._parts.append(piece[:room])
            self._size += min(room, len(piece))
        if len(piece) > room:
            if self._overflow is None:
                self._overflow = hashlib.sha256()
            self._overflow.update(piece[max(room, 0) :])

    def _take(self) -> bytes:
        if self._overflow is not None:
            self._parts.append(self._overflow.digest())
            self._overflow = None
        line = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        if self._first:
            self._first = False
            if line.startswith(_UTF16_BOMS):
                raise InputFileError(
                    "the input is UTF-16 (it starts with a UTF-16 byte order mark) and "
                    "batchpoll reads UTF-8: convert it first, e.g. iconv -f UTF-16 -t UTF-8"
                )
            # An over-long first line keeps its BOM so that it still reads as over-long.
            if len(line) <= MAX_LINE_BYTES:
                line = line.removeprefix(_BOM)
        return line


class Deduper:
    """Numbers lines from 1, parses them, and lets each distinct id or invalid text through once."""

    __slots__ = ("_forbidden", "_line_no", "_seen")

    def __init__(self, forbidden: str | None = None) -> None:
        """*forbidden*: text no id may hold (``parse_line``)."""
        self._forbidden = forbidden
        # One set for ids and invalid lines alike, keyed as their records are (item_key), so
        # the output never holds two lines under one key (resume looks records up by it).
        self._seen: set[str] = set()
        self._line_no = 0

    def items(self, lines: Iterable[bytes]) -> Iterator[Item]:
        """The new items among ``lines``, which must follow the lines passed before."""
        for raw in lines:
            self._line_no += 1
            item = parse_line(raw, self._line_no, self._forbidden)
            if item is None:
                continue
            key = item_key(item)
            if key not in self._seen:
                self._seen.add(key)
                yield item


def _tail(splitter: LineSplitter) -> list[bytes]:
    last = splitter.finish()
    return [] if last is None else [last]


def iter_items(chunks: Iterable[bytes], *, forbidden: str | None = None) -> Iterator[Item]:
    """Each distinct id (or invalid line) of the input, given as byte chunks of any size, in order.

    A BOM, CRLF and a last line without LF are accepted; *forbidden* as in ``parse_line``.
    """
    splitter, deduper = LineSplitter(), Deduper(forbidden)
    for chunk in chunks:
        yield from deduper.items(splitter.feed(chunk))
    yield from deduper.items(_tail(splitter))


async def aiter_items(
    chunks: AsyncIterable[bytes], *, forbidden: str | None = None
) -> AsyncIterator[Item]:
    """``iter_items`` for an async chunk source (a file or stdin read without blocking the loop)."""
    splitter, deduper = LineSplitter(), Deduper(forbidden)
    async for chunk in chunks:
        for item in deduper.items(splitter.feed(chunk)):
            yield item
    for item in deduper.items(_tail(splitter)):
        yield item


async def items_of_ids(ids: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[Item]:
    """Ids given one by one (the library's input): validated and de-duplicated like lines."""
    seen: set[str] = set()
    number = 0
    async for pid in _aiter(ids):
        number += 1
        problem = id_problem(pid) if isinstance(pid, str) else "id is not a string"
        item: Item = pid
        if problem is not None:
            raw = str(pid).encode("utf-8", "surrogatepass")
            item = _invalid(str(pid), problem, number, raw)
        if (key := item_key(item)) in seen:
            continue
        seen.add(key)
        yield item


async def _aiter(ids: Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(ids, AsyncIterable):
        async for pid in ids:
            yield pid
    else:
        for pid in ids:
            yield pid
