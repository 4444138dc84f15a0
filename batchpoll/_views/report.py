"""``batchpoll report OUTPUT``: the counts of a finished (or interrupted) run, read back.

The counting is ``stats.Tally``'s, the same code that builds the run's own summary, so a
report of OUTPUT and the summary of the run that wrote it agree.
"""

from __future__ import annotations

import shutil
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson

from .._core.recordline import record_fields
from .._core.stats import CAUSES, Tally, exit_code
from .._io.outfile.read import Reading, first_per_key, read_records

#: Narrowest table ``render`` draws; narrower widths are treated as this.
MIN_WIDTH: Final = 40
_STDIN: Final = "-"
_ELLIPSIS: Final = "..."  # ASCII: logs and terminals with a non-UTF-8 locale show it too


@dataclass(frozen=True, slots=True)
class Row:
    """The facts of one record that a report needs (``result`` is never kept)."""

    progress_id: str
    status: str
    elapsed_s: float | None
    error: str | None
    mode: str | None


def row_of(record: Mapping[str, Any]) -> Row | None:
    """The report facts of one record, or None if it is not a record (no string id and status).

    Odd values are read leniently: a non-number ``elapsed_s`` counts as missing, a non-string
    ``error`` is shown as text, a non-string ``mode`` as missing.
    """
    if (fields := record_fields(record)) is None:
        return None
    pid, status = fields
    elapsed = record.get("elapsed_s")
    error = record.get("error")
    mode = record.get("mode")
    return Row(
        progress_id=pid,
        status=status,
        elapsed_s=float(elapsed)
        if isinstance(elapsed, int | float) and not isinstance(elapsed, bool)
        else None,
        error=error if isinstance(error, str) or error is None else str(error),
        mode=mode if isinstance(mode, str) else None,
    )


def _rows(records: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
    """The report facts of each record, in order (one small ``Row`` each, never a result)."""
    for record in records:
        row = row_of(record)
        if row is not None:
            yield row


def _tally(rows: Iterable[Row], fail_on: frozenset[str]) -> Tally:
    tally = Tally(fail_on)
    for row in rows:
        tally.add(row.progress_id, row.status, row.elapsed_s, row.error, row.mode)
    return tally


def summarize(records: Iterable[Mapping[str, Any]], fail_on: frozenset[str]) -> dict[str, Any]:
    """``Tally.facts()`` over *records*, as ``outfile.read.read_records`` gives them: one per
    key, the first (a key read again is counted once)."""
    return _tally(_rows(first_per_key(records)), fail_on).facts()


def report_main(path: str, *, as_json: bool, fail_on: frozenset[str], out: TextIO) -> int:
    """Print the report of OUTPUT *path* to *out*; return the exit code a run would have.

    Text: ``render``'s table, then every failed id on its own tab-separated line
    (id, status, error). JSON: the summary, indented, with every failed id under ``failed``.
    Raises ``InputFileError`` when *path* cannot be read.
    """
    reading = Reading()
    rows = list(_rows(read_records(path, reading)))
    summary = _tally(rows, fail_on).facts()
    code = exit_code(summary["by_status"], fail_on)
    summary["duplicates_dropped"] = reading.duplicates
    summary["not_records"] = reading.not_records
    summary["exit_code"] = code
    failed = [row for row in rows if row.status in fail_on]
    if as_json:
        summary["failed"] = [
            {"progress_id": row.progress_id, "status": row.status, "error": row.error}
            for row in failed
        ]
        out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
        return code
    width = max(MIN_WIDTH, shutil.get_terminal_size((100, 24)).columns) if out.isatty() else 100
    del summary["failed"]  # the full list follows instead of the first few
    out.write(render(summary, width=width))
    if failed:
        out.write(f"\nfailed ids ({len(failed)}), tab-separated: id, status, error\n")
        for row in failed:
            out.write(f"{row.progress_id}\t{row.status}\t{_one_line(row.error or '')}\n")
    return code


# -- rendering --------------------------------------------------------------------------------


def render(summary: Mapping[str, Any], *, width: int = 100) -> str:
    """A plain-text view of a run's or a report's summary, no line wider than *width* cells.

    A status table (most frequent first), then one line per fact the summary holds (requests,
    retries by cause, 429s and pauses, time to end, request rate, elapsed, exit code), then the
    first failed ids. No colour and no box drawing, so it reads the same in a log.
    """
    width = max(width, MIN_WIDTH)
    out = _status_table(summary.get("by_status") or {}, width)
    facts = list(_fact_lines(summary))
    if facts:
        label_w = max(len(label) for label, _ in facts)
        out.append("")
        out.extend(_fit(f"{label:<{label_w}}  {text}", width).rstrip() for label, text in facts)
    failed = summary.get("failed") or []
    if failed:
        count = summary.get("failed_count", len(failed))
        out.append("")
        out.append(_fit(f"first failed ids ({len(failed)} of {count})", width).rstrip())
        out.extend(_failed_rows(failed, width))
    return "\n".join(out) + "\n"


def _status_table(by_status: Mapping[str, int], width: int) -> list[str]:
    total = sum(by_status.values())
    rows = sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0]))
    count_w = max(len("ids"), len(str(total)))
    share_w = len("100.0%")
    name_w = min(
        max([len("status"), *(_cells(status) for status in by_status)]),
        width - count_w - share_w - 4,
    )
    lines = [f"{_fit('status', name_w)}  {'ids':>{count_w}}  {'share':>{share_w}}"]
    for status, count in rows:
        share = f"{100 * count / total:.1f}%" if total else "-"
        lines.append(f"{_fit(status, name_w)}  {count:>{count_w}}  {share:>{share_w}}")
    lines.append(f"{_fit('total', name_w)}  {total:>{count_w}}")
    return lines


def _fact_lines(s: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    if s.get("resumed"):
        yield "resumed", f"{s['resumed']} records kept from an earlier run"
    if s.get("duplicates_dropped"):
        yield "duplicates", f"{s['duplicates_dropped']} later records of an id left out"
    if s.get("not_records"):
        yield "not records", f"{s['not_records']} lines that are no batchpoll record, left out"
    if "requests" in s:
        yield "requests", str(s["requests"])
    if "retries" in s:
        causes = s.get("retries_by_cause") or {}
        order = sorted(causes, key=lambda c: (CAUSES.index(c) if c in CAUSES else len(CAUSES), c))
        detail = ", ".join(f"{cause} {causes[cause]}" for cause in order)
        yield "retries", f"{s['retries']}" + (f" ({detail})" if detail else "")
    if "throttled" in s:
        text = f"{s['throttled']}"
        if "paused_s" in s:
            text += f", paused {_duration(s['paused_s'])}"
        if s.get("lowest_rate") is not None:
            text += f", rate lowered to {s['lowest_rate']}/s"
        yield "429s", text
    if "time_to_end_s" in s:
        t = s["time_to_end_s"]
        if t.get("max") is None:
            yield "time to end", "no id reached a terminal status"
        else:
            yield (
                "time to end",
                f"p50 {_duration(t['p50'])}, p95 {_duration(t['p95'])}, max {_duration(t['max'])}",
            )
    if "request_rate" in s:
        yield "request rate", f"{s['request_rate']} requests/s"
    if "elapsed_s" in s:
        yield "elapsed", _duration(s["elapsed_s"])
    if s.get("stopped_by_signal") is not None:
        yield "stopped by", f"signal {s['stopped_by_signal']}"
    if "exit_code" in s:
        yield "exit code", str(s["exit_code"])


def _failed_rows(failed: Iterable[Mapping[str, Any]], width: int) -> Iterator[str]:
    entries = [(str(f["progress_id"]), str(f["status"]), f.get("error")) for f in failed]
    # The id and status columns take what they need, up to a third and a quarter of the width;
    # the error gets the rest of the line.
    pid_w = min(max(_cells(pid) for pid, _, _ in entries), width // 3)
    status_w = min(max(_cells(status) for _, status, _ in entries), width // 4)
    error_w = width - 2 - pid_w - 2 - status_w - 2
    for pid, status, error in entries:
        text = _fit(_one_line(str(error)) if error is not None else "", error_w)
        yield f"  {_fit(pid, pid_w)}  {_fit(status, status_w)}  {text}".rstrip()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _one_line(text: str) -> str:
    """*text* with every run of whitespace (newlines, tabs) as one space."""
    return " ".join(text.split())


def _cells(text: str) -> int:
    """Terminal columns *text* takes: wide East Asian characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _fit(text: str, width: int) -> str:
    """*text* padded to exactly *width* cells, or cut to fit with a trailing ``...``."""
    cells = _cells(text)
    if cells <= width:
        return text + " " * (width - cells)
    if width <= len(_ELLIPSIS):
        return "." * width
    kept: list[str] = []
    room = width - len(_ELLIPSIS)
    for ch in text:
        room -= _cells(ch)
        if room < 0:
            break
        kept.append(ch)
    cut = "".join(kept) + _ELLIPSIS
    return cut + " " * (width - _cells(cut))
