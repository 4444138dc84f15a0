"""What one poll can tell us (an ``Outcome``) and what one id ends as (a ``Record``).

``client`` turns every HTTP answer or failure into exactly one ``Outcome``; ``engine`` turns a
sequence of outcomes into exactly one ``Record`` per distinct id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

#: Statuses the API reports that end an id.
TERMINAL_STATUSES: Final = frozenset(
    {"completed", "needs_clarification", "needs_agent_clarification", "cancelled", "failed"}
)
IN_PROGRESS: Final = "in_progress"
#: Statuses batchpoll itself gives an id.
POLLER_STATUSES: Final = frozenset({"timed_out", "not_found", "rejected", "error", "invalid_input"})
ALL_STATUSES: Final = TERMINAL_STATUSES | POLLER_STATUSES
#: The statuses that make the exit code 1 unless ``--fail-on`` says otherwise.
DEFAULT_FAIL_ON: Final = frozenset(
    {"failed", "timed_out", "error", "not_found", "rejected", "invalid_input"}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A readable 200 body; ``status`` may be in progress, terminal or unknown."""

    status: str
    mode: str | None
    session_id: int | None
    result: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """HTTP 400: the API named what is wrong with the id."""

    messages: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """HTTP 404."""


@dataclass(frozen=True, slots=True)
class Throttled:
    """HTTP 429 (or 503 with Retry-After).

    ``retry_after`` is the wait in seconds when the server gave a usable one (always a float,
    already capped by ``backoff.parse_retry_after``), else None: back off instead.
    """

    retry_after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Transient:
    """A failure worth retrying: 5xx, network trouble, an unreadable body."""

    reason: str


@dataclass(frozen=True, slots=True)
class Broken:
    """A failure that retrying cannot mend; the id ends as ``error`` at once."""

    reason: str


Outcome = Answer | Rejected | NotFound | Throttled | Transient | Broken


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """The one line written for one distinct input id.

    The first six fields are the contract's keys (API values as last returned); the rest are
    batchpoll's own facts: polls made, wall-clock times of the first and last poll (ISO 8601 UTC,
    ``None`` when never polled), seconds from first to last poll, and the last API status seen.
    """

    progress_id: str
    status: str
    mode: str | None = None
    session_id: int | None = None
    result: Any = None
    error: str | None = None
    polls: int = 0
    first_poll_at: str | None = None
    last_poll_at: str | None = None
    elapsed_s: float | None = None
    last_api_status: str | None = None
    #: For ``invalid_input`` only: the line's number and the SHA-256 of its bytes, which key
    #: the record (see ``record_key``); both left out of the line otherwise.
    input_line: int | None = None
    input_sha256: str | None = None

    def to_json_line(self) -> bytes:
        """One JSON object and a newline, as written to the sink."""
        doc = {
            "progress_id": self.progress_id,
            "status": self.status,
            "mode": self.mode,
            "session_id": self.session_id,
            "result": self.result,
            "error": self.error,
            "polls": self.polls,
            "first_poll_at": self.first_poll_at,
            "last_poll_at": self.last_poll_at,
            "elapsed_s": self.elapsed_s,
            "last_api_status": self.last_api_status,
        }
        if self.input_sha256 is not None:
            doc["input_line"] = self.input_line
            doc["input_sha256"] = self.input_sha256
        return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


#: Starts every key of an invalid line's record. A valid id is printable, so it never holds
#: NUL: no invalid line's key can equal an id, and a hash of the whole line keeps two
#: different invalid lines apart however long their common start.
INVALID_KEY: Final = "\x00invalid:"


def record_key(progress_id: str, status: str, input_sha256: object = None) -> str:
    """What identifies the input a record answers: the id, or for ``invalid_input`` the line.

    De-duplication of the input and ``--resume`` both use it. An ``invalid_input`` record
    without ``input_sha256`` (from an older batchpoll) keys under its text, apart from ids.
    """
    if status != "invalid_input":
        return progress_id
    if isinstance(input_sha256, str):
        return INVALID_KEY + input_sha256
    return INVALID_KEY + "text:" + progress_id
