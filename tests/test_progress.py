"""The live progress view: when it shows, what it says, logs above it, and a real terminal."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import textwrap
import threading
from pathlib import Path

import orjson
import pexpect
import pytest
from helpers import FakeClock, FakeStream
from rich.console import Console

from batchpoll._core.stats import RunStats
from batchpoll._io import logs
from batchpoll._views.progress import ProgressView, Rate, facts, wanted
from batchpoll.records import Record

SECRET = "sk-live-0123456789"

# CSI sequences (colour, cursor moves, erases, cursor show/hide) and the SGR (colour) subset.
_CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_SGR = re.compile(rb"\x1b\[([0-9;]*)m")


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A colour terminal unless a test says otherwise, whatever the runner's environment."""
    monkeypatch.setenv("TERM", "xterm")
    for name in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)


def finish(stats: RunStats, n: int, status: str, prefix: str = "id") -> None:
    """Count *n* written records with *status*, as the engine's sink does."""
    for i in range(n):
        stats.add(Record(progress_id=f"{prefix}-{status}-{i}", status=status))


def rendered(view: ProgressView) -> str:
    """One frame of *view* as plain text, 100 columns wide."""
    console = Console(file=io.StringIO(), width=100, force_terminal=False)
    console.print(view.render())
    out = console.file.getvalue()
    assert isinstance(out, str)
    return out


@pytest.mark.parametrize(
    ("enabled", "tty", "term", "expected"),
    [
        (True, True, "xterm", True),
        (True, False, "xterm", False),
        (True, True, "dumb", False),
        (False, True, "xterm", False),
        (True, True, None, True),
    ],
    ids=["terminal", "not-a-terminal", "dumb-terminal", "no-progress", "no-TERM"],
)
def test_wanted_only_on_a_capable_terminal_when_enabled(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, tty: bool, term: str | None, expected: bool
) -> None:
    """The bar shows only when enabled, on a terminal, and not on TERM=dumb."""
    if term is None:
        monkeypatch.delenv("TERM", raising=False)
    else:
        monkeypatch.setenv("TERM", term)
    assert wanted(enabled, FakeStream(tty)) is expected


def test_rate_is_rolling_so_a_pause_shows() -> None:
    """After 10 s at 100 req/s and 6 s of none, the rate is 0, not the lifetime 62.5."""
    rate = Rate(window=5.0)
    assert rate.sample(0.0, 0) is None
    count = 0
    for tick in range(1, 41):  # 10 s of samples 0.25 s apart
        count += 25
        assert rate.sample(tick * 0.25, count) == pytest.approx(100.0)
    for tick in range(41, 65):  # 6 s with no requests
        last = rate.sample(tick * 0.25, count)
    assert last == 0.0


def test_view_shows_every_fact(plain_env: None) -> None:
    """A frame shows done/total, percent, counts by status, rate, in flight, 429s and ETA."""
    clock = FakeClock()
    stats = RunStats()
    stats.started -= 100.0  # 100 s in: 50 of 200 done gives 150 more at 0.5/s, 300 s
    stats.ids, stats.input_done = 200, True
    finish(stats, 40, "completed")
    finish(stats, 10, "failed")
    stats.in_flight, stats.throttled, stats.paused_s = 7, 3, 4.5
    view = ProgressView(stats, stream=FakeStream(False), clock=clock)
    stats.requests += 500
    clock.now += 5.0
    text = rendered(view)
    assert "50/200" in text
    assert "25%" in text
    assert "completed 40" in text
    assert "failed 10" in text
    assert "100.0 req/s" in text
    assert "7 in flight" in text
    assert "3 throttled (429)" in text
    assert "paused 4.5 s" in text
    assert "ETA 0:05:00" in text


def test_view_shows_unknowns_as_question_marks(plain_env: None) -> None:
    """Before the input is read through, total and ETA are "?"; with no history, so is rate."""
    stats = RunStats()
    stats.ids = 10
    finish(stats, 4, "completed")
    text = rendered(ProgressView(stats, stream=FakeStream(False), clock=FakeClock()))
    assert "4/?" in text
    assert "ETA ?" in text
    assert "? req/s" in text


def test_heartbeat_fields_are_the_views_facts() -> None:
    """as_log gives the heartbeat the facts the bar shows, under plain keys."""
    stats = RunStats()
    stats.ids, stats.input_done = 8, True
    finish(stats, 8, "completed")
    stats.throttled, stats.paused_s, stats.in_flight = 2, 1.25, 0
    assert facts(stats, 12.345).as_log() == {
        "done": 8,
        "total": 8,
        "by_status": {"completed": 8},
        "request_rate": 12.35,
        "in_flight": 0,
        "throttled": 2,
        "paused_s": 1.25,
        "eta_s": 0,
    }


def test_logs_print_through_the_view_and_come_back_after(plain_env: None) -> None:
    """While the view is up a log line goes through its console, key masked; after, to stderr."""
    configured, screen = FakeStream(True), FakeStream(True)
    logs.configure("console", "info", secret=SECRET, stream=configured)
    log = logs.get_logger()
    with ProgressView(RunStats(), stream=screen):
        log.warning("while_live", key=SECRET)
    log.info("after_live")
    shown = screen.getvalue()
    assert "while_live" in shown
    assert "***" in shown
    assert SECRET not in shown
    assert "while_live" not in configured.getvalue()
    assert "after_live" in configured.getvalue()
    assert "after_live" not in shown


def test_json_logs_stay_one_intact_line_through_the_view(plain_env: None) -> None:
    """A JSON log line routed above the bar keeps its brackets and is never wrapped."""
    screen = FakeStream(True)
    logs.configure("json", "info", secret=SECRET, stream=FakeStream(False))
    with ProgressView(RunStats(), stream=screen):
        logs.get_logger().warning("wide", items=[1, 2], text="x" * 300, key=SECRET)
    raw = _CSI.sub(b"", screen.getvalue().encode()).replace(b"\r", b"\n")
    [line] = [line for line in raw.split(b"\n") if b'"event":"wide"' in line]
    event = orjson.loads(line)
    assert event["items"] == [1, 2]
    assert event["text"] == "x" * 300
    assert event["key"] == "***"


def test_close_twice_is_safe_and_shows_the_cursor(plain_env: None) -> None:
    """close() before __exit__ (the os._exit path) stops the bar once and shows the cursor."""
    screen = FakeStream(True)
    with ProgressView(RunStats(), stream=screen) as view:
        view.close()
        after_close = screen.getvalue()
    assert after_close.endswith("\x1b[?25h")
    assert screen.getvalue() == after_close


def test_stats_updates_and_log_lines_do_not_redraw(plain_env: None) -> None:
    """100,000 stats updates and 1,000 log lines cause a handful of renders, not one each."""
    stats = RunStats()
    stats.ids, stats.input_done = 10_000, True
    logs.configure("console", "info", secret=None, stream=FakeStream(True))
    log = logs.get_logger()
    screen = FakeStream(True)
    with ProgressView(stats, stream=screen) as view:
        for i in range(100_000):
            stats.requests += 1
            stats.in_flight = i % 32
            if i % 10 == 0:
                stats.add(Record(progress_id=f"id-{i}", status="completed"))
            if i % 100 == 0:
                log.info("tick", i=i)
    # Construction, start and stop render once each; the 4 Hz timer adds one per quarter
    # second. Rendering per event would mean 100,000 renders.
    assert view.renders <= 10
    shown = screen.getvalue()
    assert shown.count("tick ") == 1_000
    # A frame goes out at most twice per render (under a tick's log lines, then refreshed),
    # never once per log line.
    assert shown.count("/10,000") <= 2 * view.renders


_CHILD = textwrap.dedent(
    """
    import sys

    import anyio

    from batchpoll._io import logs
    from batchpoll._views.progress import ProgressView, wanted
    from batchpoll.records import Record
    from batchpoll._core.stats import RunStats

    SECRET = "sk-live-pty-0123456789"


    async def main() -> None:
        logs.configure("auto", "info", secret=SECRET)
        log = logs.get_logger()
        stats = RunStats()
        stats.ids, stats.input_done = 200, True
        assert wanted(True, sys.stderr)
        with ProgressView(stats):
            for step in range(40):
                for n in range(5):
                    stats.add(Record(progress_id=f"id-{step}-{n}", status="completed"))
                stats.requests += 12
                stats.in_flight = step % 7
                if step == 20:
                    log.warning("halfway_there", step=step, key=SECRET)
                # The child is the system under test: this is its workload, not a test's wait.
                await anyio.sleep(0.05)
        log.info("after_view", done=stats.done)


    anyio.run(main)
    """
)


def _visible(piece: bytes) -> str:
    """What one output line leaves on screen: escapes dropped, the text after the last CR."""
    return _CSI.sub(b"", piece).rsplit(b"\r", 1)[-1].decode()


def _colours(raw: bytes) -> set[int]:
    """The SGR colour parameters (foreground or background) in *raw*."""
    params = (p for m in _SGR.finditer(raw) for p in m.group(1).split(b";") if p)
    return {n for n in map(int, params) if 30 <= n <= 49 or 90 <= n <= 107}


@pytest.mark.parametrize(
    ("extra_env", "coloured"),
    [({}, True), ({"NO_COLOR": "1"}, False)],
    ids=["colour", "NO_COLOR"],
)
def test_bar_in_a_real_terminal(tmp_path: Path, extra_env: dict[str, str], coloured: bool) -> None:
    """Under a pty the bar draws and updates, a log line prints whole above it, and the
    terminal is left with the last frame, the cursor shown and nothing redrawn after."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TERM": "xterm"}
    env |= {"LANG": "C.UTF-8", **extra_env}
    transcript = io.BytesIO()
    child = pexpect.spawn(sys.executable, [str(script)], env=env, dimensions=(24, 100), timeout=20)
    child.logfile_read = transcript
    try:
        seen: set[int] = set()
        for _ in range(200):  # bounded: each expect also has its 20 s timeout
            child.expect(rb"(\d+)/200")
            seen.add(int(child.match.group(1)))
            if any(0 < n < 200 for n in seen) and len(seen) >= 2:
                break
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, transcript.getvalue()[-2000:]
    raw = transcript.getvalue()

    # It updates: frames with different counts, one of them mid-run.
    counts = [int(n) for n in re.findall(rb"(\d+)/200", raw)]
    assert len(set(counts)) >= 3
    assert counts[-1] == 200

    # The log line: one screen line of its own, whole, key masked, bar redrawn below it.
    pieces = raw.replace(b"\r\n", b"\n").split(b"\n")
    [log_piece] = [p for p in pieces if b"halfway_there" in p]
    line = _visible(log_piece)
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ \[warning\s*\] halfway_there\s+key=\*\*\* step=20$", line)
    assert b"sk-live-pty" not in raw
    assert b"/200" in raw[raw.index(b"halfway_there") :]
    assert bool(_colours(log_piece.rsplit(b"\r", 1)[-1])) is coloured
    if not coloured:
        assert not _colours(raw)

    # Clean exit: the cursor was hidden while live and shown after the last frame, and
    # nothing moves the cursor up or erases after that: the frame is left as it was.
    hidden, shown = raw.rfind(b"\x1b[?25l"), raw.rfind(b"\x1b[?25h")
    assert 0 <= hidden < shown
    tail = raw[shown:]
    assert not re.search(rb"\x1b\[\d*[AK]", tail)
    assert [_visible(p) for p in tail.replace(b"\r\n", b"\n").split(b"\n") if _visible(p)] == [
        _visible(p) for p in pieces if b"after_view" in p
    ]
    assert b"200/200" in raw[:shown].rsplit(b"\x1b[2K", 1)[-1]


def test_the_view_on_a_terminal_nobody_reads_closes_at_once(plain_env: None) -> None:
    """Frames and log lines for a terminal nobody reads never hold up close()."""
    master, slave = os.openpty()
    screen = open(slave, "w", encoding="utf-8")  # noqa: SIM115  # closed below, with master
    try:
        logs.configure("console", "info", secret=None, stream=screen)
        log = logs.get_logger()

        def run() -> None:
            with ProgressView(RunStats(), stream=screen, refresh_per_second=50):
                for i in range(20_000):
                    log.info("line", n=i)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the view waited on the terminal"
    finally:
        os.close(master)  # first: a write stuck on the terminal then fails and lets go
        with contextlib.suppress(OSError):
            screen.close()
