"""The process's open-files limit, fitted to a CLI run before its first request.

Every request in flight holds a socket. Under a limit too low for ``--concurrency`` nothing
fails at start: requests fail one by one with EMFILE ("Too many open files") and their ids end
as ``error``. The CLI owns its process, so it may raise its own soft limit; the library
(``poll_all``) leaves the host program's limits alone.
"""

from __future__ import annotations

from typing import Final

from ..errors import ConfigError
from .config import Settings

#: Descriptors a run holds besides one socket per request in flight: the standard streams,
#: INPUT, OUTPUT and a file per status with --split-by-status (about a dozen), the event loop's
#: selector and wake-up pipes, the Redis connections of --rate-store, and sockets still closing
#: while their replacements open.
MARGIN: Final = 32


def files_needed(concurrency: int) -> int:
    """Open files a run at *concurrency* needs at most."""
    return concurrency + MARGIN


def fit_open_files(settings: Settings) -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to hold what *settings* needs.

    Returns ``(before, after)`` when it raised the limit, None when it was already enough (or
    the platform has no such limit). Raises ConfigError naming ``concurrency`` when even the
    hard limit is too low, so the run ends at start (exit 2) rather than id by id.
    """
    try:
        import resource
    except ImportError:  # not on Windows: its limit is per C runtime and far higher
        return None
    need = files_needed(settings.concurrency)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or soft >= need:
        return None
    if hard == unlimited or hard >= need:
        # Up to the hard limit, as Go's runtime does at start; an unlimited hard limit cannot
        # be a soft one (macOS refuses more than OPEN_MAX), so then just what is needed.
        target = need if hard == unlimited else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass  # refused after all: reported below like a hard limit too low
        else:
            return soft, target
    shown_hard = "unlimited" if hard == unlimited else str(hard)
    most = max(soft, 0 if hard == unlimited else hard) - MARGIN
    fix = f"lower --concurrency to {most} or less, or raise the limit" if most >= 1 else "raise it"
    raise ConfigError(
        "concurrency",
        settings.concurrency,
        settings.sources.get("concurrency", "default"),
        f"needs up to {need} open files (concurrency + {MARGIN}), but the open-files limit "
        f"(ulimit -n) is {soft} and cannot be raised past {shown_hard}: {fix}",
    )
