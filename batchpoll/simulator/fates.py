"""Which answer each id gets on its n-th counted poll: a pure function of ``(seed, id, n)``.

Every id's fate follows from ``(seed, id)`` alone (see :func:`truth`), so a run can be checked
against what the server was always going to answer. Only requests that reach the answer count
as polls (the server's key check, rate limit, faults and redirects come first and count none).

=========================  ==============================================================
id                         answer at its n-th counted poll
=========================  ==============================================================
any other id               200 ``in_progress`` for polls 1..k-1, then its terminal body
``notfound-...``           404 ``{"detail": "Not found."}``
``reject-...``             400 ``{"progress_id": ["Invalid progress id."]}``
``weird-...``              200 ``queued`` (an unknown, non-terminal status) for polls 1..k-1,
                           then terminal as any other id
``slow-...``               200 ``in_progress`` forever (as every id does with ``pending``)
``flaky-...``              503 without Retry-After, on every poll
``huge-...``               200 with an ~11 MiB JSON object (a big string in ``result``), on
                           every poll: more than a client capping bodies at 10 MiB can read
``list-...``               200 ``[]`` (JSON, but not an object), on every poll
``redirect-...``           400 as ``reject-`` (the server redirects them instead when
                           ``redirect_url`` is set)
=========================  ==============================================================
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .settings import SimSettings

#: ``truth()``'s poll count for an id that never ends.
NEVER: Final = -1

# Above the 10 MiB a careful client caps bodies at, with room for the JSON around the string.
_HUGE_STRING: Final = 11 * 2**20
# Cumulative weights out of 100: completed 80, failed 8, cancelled 4, needs_* 4 each.
_TERMINALS: Final = (
    (80, "completed"),
    (88, "failed"),
    (92, "cancelled"),
    (96, "needs_clarification"),
    (100, "needs_agent_clarification"),
)
_QUESTIONS: Final = (
    "Which phone number should the agent call?",
    "Should the agent confirm the appointment time with the caller?",
    "What language should the scenarios be written in?",
)


def detail(text: str) -> bytes:
    """A DRF-style error body: ``{"detail": text}``."""
    return orjson.dumps({"detail": text})


_NOT_FOUND: Final = detail("Not found.")
_UNAVAILABLE: Final = detail("Service temporarily unavailable.")
_INVALID: Final = orjson.dumps({"progress_id": ["Invalid progress id."]})


@dataclass(frozen=True, slots=True)
class _Fate:
    status: str  # the terminal status this id ends with
    polls: int  # k: the poll (1-based) that first answers it
    mode: str
    session_id: int | None
    digest: int


def _fate(progress_id: str, settings: SimSettings) -> _Fate:
    # blake2b, never hash(): fates must agree across processes, runs and machines.
    raw = f"{settings.seed}:{progress_id}".encode("utf-8", "surrogatepass")
    h = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
    # Bit fields of h: 0-15 k, 16-31 status, 32 mode, 33-40 session null, 41-63 session id.
    span = settings.max_polls - settings.min_polls + 1
    bucket = (h >> 16 & 0xFFFF) % 100
    status = next(name for bound, name in _TERMINALS if bucket < bound)
    session = None if (h >> 33 & 0xFF) % 10 == 0 else (h >> 41) + 1
    return _Fate(
        status=status,
        polls=settings.min_polls + (h & 0xFFFF) % span,
        mode="improve" if h >> 32 & 1 else "clarify",
        session_id=session,
        digest=h,
    )


def truth(progress_id: str, settings: SimSettings) -> tuple[str, int]:
    """What *progress_id* ends as under *settings*, and after how many counted polls.

    Terminal statuses come with k >= 1 (``hop-`` ids too: their redirect is no poll);
    ``("not_found", 1)`` and ``("rejected", 1)`` for those forms (and for ``redirect-`` ids
    when ``redirect_url`` is None); ``("in_progress", NEVER)`` for ids that never end (``slow-``
    or ``pending``); ``("error", NEVER)`` for ids no careful client can ever read an answer for:
    ``flaky-``, ``huge-``, ``list-`` and ``redirect-`` ids sent to another origin. Pure: no
    server state, faults or rate limits.
    """
    if progress_id.startswith("notfound-"):
        return "not_found", 1
    if progress_id.startswith("reject-"):
        return "rejected", 1
    if progress_id.startswith("redirect-"):
        return ("rejected", 1) if settings.redirect_url is None else ("error", NEVER)
    if progress_id.startswith(("flaky-", "huge-", "list-")):
        return "error", NEVER
    if settings.pending or progress_id.startswith("slow-"):
        return "in_progress", NEVER
    fate = _fate(progress_id, settings)
    return fate.status, fate.polls


def answer(progress_id: str, settings: SimSettings, poll: int) -> tuple[int, bytes]:
    """The HTTP status and JSON body *progress_id* gets at its *poll*-th counted poll (1-based)."""
    if progress_id.startswith("notfound-"):
        return 404, _NOT_FOUND
    if progress_id.startswith(("reject-", "redirect-")):
        return 400, _INVALID
    if progress_id.startswith("flaky-"):
        return 503, _UNAVAILABLE
    if progress_id.startswith("huge-"):
        return 200, _huge_body(progress_id, settings)
    if progress_id.startswith("list-"):
        return 200, b"[]"
    return 200, progress_body(progress_id, settings, poll)


def progress_body(progress_id: str, settings: SimSettings, poll: int) -> bytes:
    """The progress object *progress_id* shows after *poll* counted polls (0 = none yet)."""
    fate = _fate(progress_id, settings)
    waiting = "queued" if progress_id.startswith("weird-") else "in_progress"
    done = poll >= fate.polls and not settings.pending and not progress_id.startswith("slow-")
    return orjson.dumps(
        {
            "progress_id": progress_id,
            "session_id": fate.session_id,
            "mode": fate.mode,
            "status": fate.status if done else waiting,
            "result": _result(fate) if done else None,
            "error": "The agent run failed." if done and fate.status == "failed" else None,
        }
    )


def _result(fate: _Fate) -> dict[str, Any] | None:
    # Random(int) + random() only: the one pairing Python promises stays the same across versions.
    draw = random.Random(fate.digest).random
    if fate.status == "completed":
        scenarios = [
            {
                "id": 1 + int(draw() * 99_999),
                "name": f"{fate.mode} scenario {n}",
                "score": round(draw() * 100, 1),
            }
            for n in range(1, 2 + int(draw() * 3))
        ]
        summary = f"{len(scenarios)} scenario(s) evaluated."
        return {"scenarios": scenarios, "summary": summary, "evaluator_id": 1 + int(draw() * 9999)}
    if fate.status.startswith("needs_"):
        return {"questions": list(_QUESTIONS[: 1 + int(draw() * len(_QUESTIONS))])}
    return None


def _huge_body(progress_id: str, settings: SimSettings) -> bytes:
    fate = _fate(progress_id, settings)
    body = {
        "progress_id": progress_id,
        "session_id": fate.session_id,
        "mode": fate.mode,
        "status": "completed",
        "result": {"transcript": "x" * _HUGE_STRING},
        "error": None,
    }
    return orjson.dumps(body)
