"""The live progress view: a rich bar on stderr, redrawn on a timer from ``RunStats``.

The engine only bumps integers in ``RunStats``; the view's own thread reads them about four
times a second, so the cost does not grow with the poll rate (a redraw per event would be
5,000 a second). While the view is up, log lines print above the bar through its console
(``logs.routed_to``), so neither breaks the other. At exit the last frame stays on screen,
followed by a newline and the cursor shown again.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Final, Self, TextIO, cast

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .._core.stats import Facts, Rate, RunStats, facts
from .._io import fdio, logs

_BAR_WIDTH: Final = 30
#: Seconds close() waits for the ticker's last tick.
_JOIN_S: Final = 1.0
_GOOD: Final = frozenset({"completed"})
_BAD: Final = frozenset({"failed", "error", "timed_out", "not_found", "rejected", "invalid_input"})


def wanted(enabled: bool, stream: TextIO) -> bool:
    """Whether to show the live view: asked for, *stream* a terminal, and not ``TERM=dumb``."""
    return enabled and stream.isatty() and os.environ.get("TERM") != "dumb"


def _draw(f: Facts) -> RenderableType:
    """Three short lines: bar, done/total, ETA; counts by status; request rate, in flight, 429s."""
    total = "?" if f.total is None else f"{f.total:,}"
    percent = "" if not f.total else f"  {100 * f.done / f.total:3.0f}%"
    head = Table.grid(padding=(0, 1))
    head.add_row(
        ProgressBar(total=f.total or None, completed=f.done, width=_BAR_WIDTH),
        Text(f"{f.done:,}/{total}{percent}  ETA {_clock(f.eta_s)}  elapsed {_clock(f.elapsed_s)}"),
    )
    statuses = Text(no_wrap=True, overflow="ellipsis")
    for status, n in sorted(f.by_status.items(), key=lambda item: (-item[1], item[0])):
        style = "green" if status in _GOOD else "red" if status in _BAD else "yellow"
        statuses.append(f"{status} ", style=style).append(f"{n:,}  ")
    if not f.by_status:
        statuses.append("no results yet", style="dim")
    statuses.rstrip()
    rate = "?" if f.request_rate is None else f"{f.request_rate:,.1f}"
    traffic = Text(no_wrap=True, overflow="ellipsis").append(
        f"{rate} req/s  {f.in_flight:,} in flight  {f.throttled:,} throttled (429)"
        f"  paused {f.paused_s:,.1f} s"
    )
    return Group(head, statuses, traffic)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}"


class _Rendered:
    """Lines already rendered for this terminal, passed through to it untouched."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Segment(self._text)
        yield Segment.line()  # print() ends only str and Text with its `end`


class _OutletText:
    """The text stream rich writes to when the terminal has an ``fdio.Outlet``: a frame goes
    out whole, waits in the outlet's queue, or is dropped; the ticker never waits on it."""

    def __init__(self, stream: TextIO, out: fdio.Outlet) -> None:
        self._stream = stream
        self._out = out
        self.encoding = stream.encoding or "utf-8"

    def write(self, text: str) -> int:
        self._out.write(text.encode(self.encoding, "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._out.fd


def _text_out(stream: TextIO) -> TextIO:
    """*stream* itself, or a stand-in writing through its outlet (a pipe or terminal)."""
    out = fdio.outlet_for(stream)
    # Duck-typed: rich uses only write, flush, isatty, fileno and encoding.
    return stream if out is None else cast("TextIO", _OutletText(stream, out))


class ProgressView:
    """A rich Live display on stderr, refreshed on a timer (about 4 Hz) from RunStats; never
    per event. Log lines print above it while it is up; at exit its last frame stays.

    Log lines are held until the next tick and printed together above the new frame: a line
    printed at once makes rich redraw the whole bar under it, about a millisecond each, which
    a run logging a few hundred failed ids a second would feel. They wait at most one tick.
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        stream: TextIO | None = None,
        refresh_per_second: float = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        stream = stream or sys.stderr
        self.renders = 0  # how many times the stats were read and drawn
        self._stats = stats
        self._clock = clock
        self._rate = Rate()
        self._period = 1 / refresh_per_second
        # Appended to by the logging thread, drained by the ticker: deque's append and
        # popleft are atomic, so no lock is needed between them.
        self._pending: deque[str] = deque()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._exit: ExitStack | None = None
        self._console = Console(
            file=_text_out(stream),
            no_color=not logs.use_colour(stream),
            highlight=False,
            markup=False,
        )
        # stdout may be the JSON-lines OUTPUT, so it is never redirected. Stray writes to
        # sys.stderr (warnings, a library's print) are, when the view owns sys.stderr.
        # Refreshing is ours (_tick), so that a tick's log lines and its frame go out together.
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            get_renderable=self.render,
            redirect_stdout=False,
            redirect_stderr=stream is sys.stderr,
        )

    def console(self) -> Console:
        """The console to print through while the view is up."""
        return self._console

    def render(self) -> RenderableType:
        """Read the stats once and draw them (the timer calls this, never an event)."""
        self.renders += 1
        rate = self._rate.sample(self._clock(), self._stats.requests)
        return _draw(facts(self._stats, rate))

    def __enter__(self) -> Self:
        # close() unwinds these in reverse: ticker stopped, lines flushed, last frame drawn,
        # logs sent back to their stream.
        with ExitStack() as stack:
            stack.enter_context(logs.routed_to(self._pending.append))
            # Draw at once rather than a tick in.
            self._live.start(refresh=True)
            stack.callback(self._live.stop)  # last frame, a newline, the cursor shown
            stack.callback(self._flush)  # lines logged since the last tick
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
            stack.callback(self._halt)
            self._exit = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing: pending log lines, last frame, newline, cursor shown, logs restored.

        Safe to call twice, so an exit that skips ``__exit__`` (``os._exit`` on a second
        signal) can call it first and not leave the terminal without a cursor.
        """
        stack, self._exit = self._exit, None
        if stack is not None:
            stack.close()

    def _tick(self) -> None:
        while not self._stop.wait(self._period):
            self._flush()
            self._live.refresh()

    def _halt(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            # Its writes never wait on the terminal (see _text_out), so a tick ends soon;
            # bounded all the same, since a second signal closes the view before exiting.
            self._ticker.join(_JOIN_S)
            self._ticker = None

    def _flush(self) -> None:
        pending, lines = self._pending, []
        while pending:
            lines.append(pending.popleft())
        if lines:
            # Lines come rendered for this terminal (logs.use_colour made the choice this
            # console did), so they go out as they are: parsing their ANSI colours back into
            # rich styles would cost more than the log call. soft_wrap leaves a long line
            # whole for the terminal to wrap.
            self._console.print(_Rendered("\n".join(lines)), soft_wrap=True)
