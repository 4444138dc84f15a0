"""Nothing a server sends crashes a poll or a run: generated raw HTTP/1.1 answers, real client.

One loopback ``RawServer`` serves every example; each example swaps the bytes it answers with.
The strategies are public (``answers``, ``bodies``, ``json_values``) so other tests can reuse
them; bodies carry the API key, plainly and JSON-escaped, for tests of what batchpoll writes.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import anyio
import orjson
import pytest
import structlog
from helpers import FAST, KEY, ListSink, items_of
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from raw_server import RawServer, raw_server

from batchpoll._io.client import ApiClient
from batchpoll._io.engine import Engine
from batchpoll._io.outfile.append import LineSink
from batchpoll.errors import AuthRefused
from batchpoll.records import Answer, Broken, NotFound, Record, Rejected, Throttled, Transient

pytestmark = pytest.mark.anyio

OUTCOMES = (Answer, Rejected, NotFound, Throttled, Transient, Broken)
REQUEST_TIMEOUT = 2.0
#: The key as a JSON string, and the same string with every character \u-escaped.
KEY_JSON = orjson.dumps(KEY)
KEY_ESCAPED = ('"' + "".join(f"\\u{ord(c):04x}" for c in KEY) + '"').encode()
_ORIGIN = b"{origin}"  # replaced by the server's base URL when the example is served


def _no_crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"").replace(b"\n", b"")


# -- bodies -------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.sampled_from([b"null", b"true", b"false", b"0", b"-0", b"1.5e300", b"9" * 400]),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    # Not JSON, or JSON orjson refuses: NaN/Infinity literals, overflow, lone surrogates, bad UTF-8.
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"01", b"1.", b"+1"]),
    st.sampled_from([b'"\\ud800"', b'"\\udc00x"', b'"\xff\xfe"', b'"\xc3"', b'"\\u00"']),
    st.text(max_size=12).map(orjson.dumps),
    st.sampled_from([KEY_JSON, KEY_ESCAPED]),
)


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


#: JSON texts (and near misses), a few levels deep.
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(st.text(max_size=4).map(orjson.dumps), inner), max_size=4).map(_object),
    ),
    max_leaves=8,
)
#: Nesting from shallow to past what orjson reads (1024) or writes (~255).
deep_values = st.integers(1, 1100).flatmap(
    lambda d: st.sampled_from([b"[" * d + b"]" * d, b'{"a":' * d + b"1" + b"}" * d])
)
_field_values = st.one_of(
    json_values,
    deep_values,
    st.sampled_from(
        [b'"in_progress"', b'"completed"', b'"failed"', b'"clarify"', b'"improve"', b"12"]
    ),
    st.sampled_from([b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616"]),
    st.integers(0, 20_000).map(lambda n: b'"' + b"x" * n + b'"'),
)
_FIELDS = ["progress_id", "session_id", "mode", "status", "result", "error"]
#: Progress objects whose every field may be missing, repeated or of the wrong type.
progress_objects = st.lists(
    st.tuples(st.sampled_from(_FIELDS).map(orjson.dumps), _field_values), max_size=7
).map(_object)
#: Everything a 200 (or any other status) might carry.
bodies = st.one_of(
    progress_objects,
    progress_objects,
    json_values,
    deep_values,
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"<html><body>502 Bad Gateway</body></html>",
            KEY.encode(),
            b'{"status": "completed", "result": {"key": ' + KEY_ESCAPED + b"}}",
            b'{"progress_id": ["Not a valid id."], "key": ' + KEY_JSON + b"}",
        ]
    ),
)

# -- heads --------------------------------------------------------------------------------------

_statuses = st.one_of(
    st.sampled_from([200, 200, 200, 301, 302, 307, 308, 400, 401, 403, 404, 429, 503, 500]),
    st.integers(100, 599),
)
_reasons = st.one_of(st.sampled_from([b"OK", b"", b"Weird Reason"]), st.binary(max_size=12))
_locations = st.one_of(
    st.sampled_from(
        [
            _ORIGIN + b"/p?progress_id=x",  # same origin: followed, to the same answer
            b"/p?progress_id=x",
            b"p",
            b"?progress_id=y",
            b"",
            b"http://127.0.0.2:9/x",  # other origins: never followed, never connected to
            b"https://example.invalid/",
            b"mailto:x",
            b"http://127.0.0.1:1:2/x",
            b"http://[::1",
            b"http://127.0.0.1:99999999999999999999/x",
            b"http://xn--/",
            b"http://\xff/",
            b"/\xff\xfe",
        ]
    ),
    st.binary(max_size=24),
)
_retry_afters = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"1",
            b"1.5",
            b"86400",
            b"99999999999999999999",
            b"-1",
            b"nan",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"soon",
        ]
    ),
    st.binary(max_size=16),
)
_content_types = st.sampled_from(
    [b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON", b"text/html",
     b"application/problem+json", b"", b"json", b"\xff/\xfe"]
)  # fmt: skip
_encodings = st.sampled_from(
    [b"gzip", b"deflate", b"br", b"zstd", b"identity", b"bogus", b"gzip, gzip", b"GZIP"]
)
_LENGTHS = ["exact", "missing", "smaller", "larger", "not-a-number", "negative", "twice", "huge"]


@dataclass(frozen=True)
class RawAnswer:
    """One generated answer: its status (for the AuthRefused check) and its raw bytes."""

    status: int
    raw: bytes


def _encode(body: bytes, encoding: bytes | None, really: bool, raw_deflate: bool) -> bytes:
    if not really or encoding is None:
        return body
    match encoding.lower():
        case b"gzip":
            return gzip.compress(body)
        case b"deflate" if raw_deflate:
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            return packer.compress(body) + packer.flush()
        case b"deflate":
            return zlib.compress(body)
    return body  # br and zstd cannot be made without their libraries: sent as they are


def _length_headers(kind: str, size: int) -> list[bytes]:
    match kind:
        case "exact":
            return [b"%d" % size]
        case "smaller":
            return [b"%d" % max(0, size - 5)]
        case "larger":
            return [b"%d" % (size + 50)]
        case "not-a-number":
            return [b"lots"]
        case "negative":
            return [b"-1"]
        case "twice":
            return [b"%d" % size, b"%d" % (size + 1)]
        case "huge":
            return [b"99999999999999999999999"]
    return []


#: The parts of an answer that an example may make hostile; the rest stay as a real API's.
_PARTS = ("status", "reason", "type", "encoding", "location", "retry", "length", "body")
#: A well-formed progress object whose other fields may be anything (deep, huge, wrong type).
_tidy_progress = st.tuples(
    st.sampled_from([b'"in_progress"', b'"completed"', b'"failed"', b'"weird"']),
    st.lists(st.tuples(st.sampled_from(_FIELDS[:-3] + _FIELDS[-2:]), _field_values), max_size=5),
).map(lambda sv: _object([(b'"status"', sv[0]), *((orjson.dumps(k), v) for k, v in sv[1])]))


@st.composite
def answers(draw: st.DrawFn) -> RawAnswer:
    """A raw HTTP/1.1 answer: status line, headers (some lying), and a body.

    Each example makes a few parts hostile and keeps the others as a real API sends them, so
    that both the parser's edge cases (behind a tidy head) and the head's are reached.
    """
    bad = draw(st.sets(st.sampled_from(_PARTS)))
    status = draw(_statuses) if "status" in bad else 200
    reason = _no_crlf(draw(_reasons)) if "reason" in bad else b"OK"
    body = draw(bodies if "body" in bad else _tidy_progress)
    if "encoding" in bad:
        encoding = draw(_encodings)
        body = _encode(body, encoding, draw(st.booleans()), draw(st.booleans()))
    else:
        encoding = draw(st.sampled_from([None, b"gzip"]))
        body = _encode(body, encoding, True, False)
    head = [b"HTTP/1.1 %d %s" % (status, reason)]
    content_type = draw(st.none() | _content_types) if "type" in bad else b"application/json"
    if content_type is not None:
        head.append(b"Content-Type: " + content_type)
    if encoding is not None:
        head.append(b"Content-Encoding: " + encoding)
    if "location" in bad:
        head.append(b"Location: " + _no_crlf(draw(_locations)))
    if "retry" in bad:
        head.append(b"Retry-After: " + _no_crlf(draw(_retry_afters)))
    if "length" not in bad:
        head.append(b"Content-Length: %d" % len(body))
    elif draw(st.booleans()):  # chunked, sometimes with broken framing
        head.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if draw(st.booleans()) else body
    else:
        kind = draw(st.sampled_from(_LENGTHS))
        head += [b"Content-Length: " + value for value in _length_headers(kind, len(body))]
    head.append(draw(st.sampled_from([b"Connection: close", b"Connection: keep-alive", b"X: y"])))
    return RawAnswer(status, b"\r\n".join(head) + b"\r\n\r\n" + body)


# -- the properties -----------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    """One raw server for every example of a test."""
    async with raw_server() as srv:
        yield srv


def _serve(srv: RawServer, answer: RawAnswer) -> None:
    srv.response = answer.raw.replace(_ORIGIN, srv.url.encode())


def _assert_writable(outcome: object) -> None:
    """Every value the outcome carries can be written by orjson; a wait is a capped float."""
    match outcome:
        case Answer():
            orjson.dumps([outcome.status, outcome.mode, outcome.session_id, outcome.error])
            orjson.dumps(outcome.result)
        case Throttled(retry_after=wait, reason=text):
            assert wait is None or (type(wait) is float and 0 <= wait <= 6 * 3600), wait
            orjson.dumps(text)
        case Transient(reason=text) | Broken(reason=text):
            orjson.dumps(text)
        case Rejected(messages=text):
            orjson.dumps(text)


_PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PROPERTY
@given(answer=answers())
async def test_a_poll_always_ends_in_an_outcome(server: RawServer, answer: RawAnswer) -> None:
    """Any answer gives an Outcome (or AuthRefused for a 401/403) within the request timeout."""
    _serve(server, answer)
    settings_ = replace(FAST, base_url=server.url, path="/p", request_timeout=REQUEST_TIMEOUT)
    async with ApiClient(settings_) as client:
        try:
            # The watchdog gives up between 1 and 1.125 timeouts in; a second more for a busy box.
            with anyio.fail_after(REQUEST_TIMEOUT * 1.125 + 1.0):
                outcome = await client.poll("hostile")
        except AuthRefused:
            assert answer.status in (401, 403)
            return
    assert isinstance(outcome, OUTCOMES), outcome
    _assert_writable(outcome)
    event(type(outcome).__name__)


_IDS = ["a", "b/c", "d?e=f"]


def _plain(status: int, body: bytes) -> RawAnswer:
    head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return RawAnswer(status, head % (status, len(body)) + body)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answer=answers())
# The key echoed as it was sent, and JSON-escaped so that no byte of it shows in the body.
@example(
    answer=_plain(
        200, b'{"status":"failed","error":' + KEY_JSON + b',"result":[' + KEY_JSON + b"]}"
    )
)
@example(
    answer=_plain(
        200, b'{"status":"completed","mode":' + KEY_ESCAPED + b',"result":{' + KEY_ESCAPED + b":1}}"
    )
)
@example(answer=_plain(400, b'{"progress_id":[' + KEY_ESCAPED + b"]}"))
async def test_a_run_writes_one_writable_record_per_id(
    server: RawServer, answer: RawAnswer
) -> None:
    """Over any answer, a run writes exactly one record per id, each one JSON-serialisable
    and none holding the key as the sink writes it (or stops with AuthRefused on a 401/403)."""
    _serve(server, answer)
    settings_ = replace(
        FAST,
        base_url=server.url,
        path="/p",
        concurrency=3,
        max_retries=2,
        interval=0.01,
        max_interval=0.02,
        timeout=0.15,
        deadline=2.0,
        request_timeout=0.5,
    )
    sink = ListSink()
    async with ApiClient(settings_) as client:
        engine = Engine(settings_, client.poll, sink, log=structlog.get_logger())
        try:
            with anyio.fail_after(5):
                await engine.run(items_of(_IDS))
        except AuthRefused:
            assert answer.status in (401, 403)
            assert len({r.progress_id for r in sink.records}) == len(sink.records)
            _assert_no_key_written(sink.records)
            return
    assert sorted(r.progress_id for r in sink.records) == sorted(_IDS)
    for rec in sink.records:
        assert orjson.loads(rec.to_json_line())["progress_id"] == rec.progress_id
    _assert_no_key_written(sink.records)


def _assert_no_key_written(records: list[Record]) -> None:
    """What the CLI's sink would write of *records* holds no trace of the key."""
    sink = LineSink(os.devnull, secret=KEY)
    try:
        written = sink.encode(records)
    finally:
        sink.close()
    assert KEY.encode() not in written
    assert len(written.splitlines()) == len(records)
