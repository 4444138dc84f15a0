"""The one error tree of batchpoll; only ``cli`` turns these into exit codes.

::

    BatchpollError (1)
     ├─ UsageError (2)        bad flags or arguments
     ├─ ConfigError (2)       a setting with a bad value, named with where it came from
     ├─ InputFileError (2)    the input or output file cannot be used
     ├─ RateStoreError (2)    the shared rate store (--rate-store) cannot be used
     └─ AuthRefused (3)       the API answered 401/403: every other id would fail the same way

Per-id failures (404, 400, retries used up, timeouts) are records, not exceptions:
only what ends the whole run is raised.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

_E = TypeVar("_E", bound=BaseException)

#: The exit code when standard output's reader went away (``| head``), as a shell reports
#: a SIGPIPE death: not an error of ours, said quietly.
SIGPIPE_EXIT = 141


def find_error(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first *kind* in *exc*, looking inside exception groups (task groups raise those)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_error(inner, kind)) is not None:
                return found
    return None


class BatchpollError(Exception):
    """Base of every error batchpoll raises on purpose."""

    exit_code: ClassVar[int] = 1


class UsageError(BatchpollError):
    """The command line cannot be understood."""

    exit_code = 2


class ConfigError(BatchpollError):
    """A setting has a bad value; the message names the key, the value and its source."""

    exit_code = 2

    def __init__(self, key: str, value: object, source: str, problem: str) -> None:
        self.key = key
        self.value = value
        self.source = source
        self.problem = problem
        super().__init__(f"{key}={value!r} (from {source}): {problem}")


class InputFileError(BatchpollError):
    """The input file (or the output file) cannot be opened or read."""

    exit_code = 2


class RateStoreError(BatchpollError):
    """The shared rate store cannot be used: at start unreachable, refusing, or no client;
    later, refusing every call for 30 s.

    The message names the store's URL with any password masked. Once a run has started, an
    unreachable store is waited for, not raised.
    """

    exit_code = 2


class AuthRefused(BatchpollError):
    """The API refused the key; polling other ids would only be refused too."""

    exit_code = 3

    def __init__(self, status: int, key_source: str) -> None:
        self.status = status
        self.key_source = key_source
        super().__init__(
            f"the API refused the key with HTTP {status}; the key came from {key_source}. "
            "Check it, then run again with --resume to finish the remaining ids."
        )
