"""Records as a JUnit XML report, the format GitLab, Jenkins and GitHub render as test results.

One ``<testcase>`` per record: a ``<failure>`` for a status in ``--fail-on``, a ``<skipped>`` for
a status that asks a person to look (``cancelled``, ``needs_*``) when it is not in ``--fail-on``,
and nothing for a record that passed::

    <testsuites tests= failures= errors="0" skipped= time=>
      <testsuite name="batchpoll" tests= failures= errors="0" skipped= time=>
        <testcase classname="batchpoll.improve" name="<progress_id>" time="<elapsed_s>">
          <failure message="failed: <first line of error>" type="failed">failed
    <the whole error></failure>
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from xml.etree import ElementTree as ET

from .._io.outfile.replace import replace_atomically
from ..errors import InputFileError
from .report import Row, row_of

#: Statuses shown as skipped (not passed, not failed) unless ``--fail-on`` names them.
SKIPPED_STATUSES: Final = frozenset(
    {"cancelled", "needs_clarification", "needs_agent_clarification"}
)

# Characters XML 1.0 cannot hold at all, even escaped; ElementTree would write them as they are
# and leave a file no CI server can parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _body(row: Row) -> tuple[str, str]:
    """The message attribute and the element text of a failure or skip."""
    if not row.error:
        return row.status, row.status
    first_line = row.error.strip().splitlines()[0] if row.error.strip() else ""
    message = f"{row.status}: {first_line}" if first_line else row.status
    return _xml_text(message), _xml_text(f"{row.status}\n{row.error}")


def write_junit(
    path: str,
    records: Iterable[Mapping[str, Any]],
    fail_on: frozenset[str],
    *,
    suite: str = "batchpoll",
    keep_open: Callable[[int], None] | None = None,
) -> None:
    """Write *records* to *path* as JUnit XML, atomically (a temporary file renamed over it;
    *keep_open* as in ``outfile.replace.replace_atomically``).

    Test case times are the records' ``elapsed_s`` (0 when never polled); the suite's time is
    their sum. Items that are not records (no string ``progress_id`` and ``status``) are left
    out. Raises ``InputFileError`` when *path* cannot be written.
    """
    testsuite = ET.Element("testsuite", name=_xml_text(suite))
    tests = failures = skipped = 0
    total_time = 0.0
    for record in records:
        row = row_of(record)
        if row is None:
            continue
        tests += 1
        seconds = row.elapsed_s or 0.0
        total_time += seconds
        case = ET.SubElement(
            testsuite,
            "testcase",
            classname=_xml_text(f"batchpoll.{row.mode or 'unknown'}"),
            name=_xml_text(row.progress_id),
            time=f"{seconds:.3f}",
        )
        if row.status in fail_on:
            failures += 1
            message, text = _body(row)
            ET.SubElement(case, "failure", message=message, type=_xml_text(row.status)).text = text
        elif row.status in SKIPPED_STATUSES:
            skipped += 1
            message, text = _body(row)
            ET.SubElement(case, "skipped", message=message).text = text
    counts = {
        "tests": str(tests),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{total_time:.3f}",
    }
    testsuite.attrib.update(counts)
    root = ET.Element("testsuites", counts)
    root.append(testsuite)
    ET.indent(root)
    _write_atomically(path, ET.ElementTree(root), keep_open)


def _write_atomically(
    path: str, tree: ET.ElementTree[ET.Element], keep_open: Callable[[int], None] | None
) -> None:
    buffer = io.BytesIO()
    tree.write(buffer, encoding="utf-8", xml_declaration=True)
    buffer.write(b"\n")
    try:
        replace_atomically(path, buffer.getvalue(), keep_open=keep_open)
    except OSError as exc:
        raise InputFileError(f"cannot write JUnit report {path}: {exc.strerror or exc}") from None


def looks_like_junit(head: bytes) -> bool:
    """Whether a file's first bytes are a JUnit report batchpoll wrote (so it may replace it)."""
    return head.startswith(b"<?xml") and b"<testsuites" in head and _SUITE in head


_SUITE: Final = b'<testsuite name="batchpoll"'
