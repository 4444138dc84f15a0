"""The key is written nowhere, whoever echoes it back: OUTPUT, split files, summary, JUnit, logs."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web
from helpers import KEY

from batchpoll._core.redact import MASK, json_needle, mask_value
from batchpoll._io.outfile.append import LineSink
from batchpoll.records import Record

PATH = "/test_framework/v1/scenarios/scenario-agent-progress/"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "secret",
    ["sk_live_abc123", 'nq"uo\\te', "ümlaut-key", "n0"],
    ids=["plain", "quote-backslash", "non-ascii", "escape-letter"],
)
async def test_line_sink_masks_the_key_in_every_field_and_stays_json(
    tmp_path: Path, secret: str
) -> None:
    """A record holding the key anywhere is written with ***, as valid JSON, the rest kept."""
    path = tmp_path / "out.jsonl"
    sink = LineSink(str(path), secret=secret)
    record = Record(
        progress_id=f"id-{secret}",
        status="failed",
        mode="improve",
        result={"echo": secret, secret: [1, {"deep": f"x{secret}y"}], "other": "\n" + secret},
        error=f"bad key {secret}",
        last_api_status="failed",
    )
    clean = Record(progress_id="clean", status="completed", result={"n": "\n0"})
    await sink.write([record, clean])
    sink.close()
    data = path.read_bytes()
    first, second = (orjson.loads(line) for line in data.splitlines())
    assert not any(secret in text for text in _strings(first))
    assert first["result"] == {"echo": MASK, MASK: [1, {"deep": f"x{MASK}y"}], "other": "\n***"}
    assert (first["progress_id"], first["error"]) == (f"id-{MASK}", f"bad key {MASK}")
    assert second == orjson.loads(clean.to_json_line())


def _strings(value: object) -> list[str]:
    """Every string in a decoded JSON value, dict keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def test_the_needle_is_how_orjson_writes_the_key() -> None:
    """A string holding the key serialises to bytes holding json_needle(key), escapes and all."""
    for secret in ('nq"uo\\te', "ümlaut", "tab\there"):
        assert json_needle(secret) in orjson.dumps({"a": [f"x{secret}y"]})


def test_mask_value_leaves_values_without_the_key_alone() -> None:
    """Masking rebuilds only containers; numbers, None and key-free strings stay as they are."""
    value = {"a": [1, 2.5, None, True, "text"], "b": {"c": "d"}}
    assert mask_value(value, KEY) == value
    assert mask_value(f"{KEY}{KEY}", KEY) == MASK * 2


def _echo_app() -> web.Application:
    """A hostile API: every answer carries the key it was sent, in a different place per id."""

    seen: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        key = request.headers.get("X-CEKURA-API-KEY", "")
        pid = request.query.get("progress_id", "")
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        if pid == "echo-loc-host":
            raise web.HTTPFound(f"http://{key.upper()}.example.test/x")
        if pid == "echo-errcut":
            body = orjson.dumps({"status": "failed", "error": "x" * 9993 + key + "y" * 50})
            return web.Response(body=body, content_type="application/json")
        if pid == "echo-400":
            return web.json_response({"progress_id": [f"key {key} not allowed"]}, status=400)
        if pid == "echo-escaped":
            body = (
                f'{{"status":"failed","mode":"improve","result":{{"k":"{escaped}"}},"error":null}}'
            )
            return web.Response(body=body, content_type="application/json")
        if pid == "echo-status":
            seen[pid] = seen.get(pid, 0) + 1
            status = f"weird-{key}" if seen[pid] == 1 else "completed"
            body = orjson.dumps({"status": status, "result": None, "error": key})
            return web.Response(body=body, content_type="application/json")
        doc = {
            "progress_id": pid,
            "session_id": 1,
            "mode": key,
            "status": "completed" if pid == "echo-result" else "failed",
            "result": {"prompt": f"use {key}", key: [key]},
            "error": f"the key was {key}",
        }
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get(PATH, handle)
    return app


@asynccontextmanager
async def _serving() -> AsyncIterator[str]:
    runner = web.AppRunner(_echo_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_server_echoing_the_key_gets_it_into_no_file_and_no_log(tmp_path: Path) -> None:
    """Key echoed in results, errors, a 400, JSON escapes and a status: no written byte has it."""
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "echo-result\necho-failed\necho-400\necho-escaped\necho-status\n"
        "echo-loc-host\necho-errcut\n"
    )
    out, summary, junit, split = (
        tmp_path / n for n in ("out.jsonl", "summary.json", "junit.xml", "split")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPOLL_", "CEKURA_"))}
    env |= {"HOME": str(tmp_path), "CEKURA_API_KEY": KEY}
    async with _serving() as url:
        cmd = [
            sys.executable, "-m", "batchpoll", "run", str(ids), "-o", str(out),
            "--base-url", url, "--summary", str(summary), "--junit", str(junit),
            "--split-by-status", str(split), "--log-level", "debug", "--log-format", "json",
            "--interval", "0.01", "--max-interval", "0.02", "--rate", "200",
            "--deadline", "3",
        ]  # fmt: skip
        with anyio.fail_after(30):
            proc = await anyio.run_process(cmd, env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    written = {p: p.read_bytes() for p in (out, summary, junit, *split.iterdir())}
    written |= {tmp_path / "stdout": proc.stdout, tmp_path / "stderr": proc.stderr}
    for path, data in written.items():
        assert KEY.encode() not in data, path
        # Nor a piece of it (a cut), nor the key in another case (yarl lowercases a host).
        assert KEY[:6].encode().lower() not in data.lower(), path
    records = {r["progress_id"]: r for r in map(orjson.loads, out.read_bytes().splitlines())}
    assert len(records) == 7
    assert records["echo-result"]["result"] == {"prompt": "use ***", "***": ["***"]}
    assert records["echo-escaped"]["result"] == {"k": "***"}
    assert records["echo-400"]["status"] == "rejected"


def test_mask_text_masks_the_key_in_any_case() -> None:
    """Text a library may have case-folded (a URL's host) has the key masked in any case."""
    from batchpoll._core.redact import mask_text

    assert mask_text("http://sk_live_abcdef.example", "SK_Live_ABCdef") == "http://***.example"
    assert mask_text("nothing here", "SK_Live_ABCdef") == "nothing here"
