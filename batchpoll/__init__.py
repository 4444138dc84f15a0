"""batchpoll: poll many Cekura progress ids at once, within the API's limits, losing none."""

from ._api import poll_all
from ._core.config import Settings
from ._core.redact import Secret
from ._core.stats import RunStats
from ._version import __version__ as __version__
from .errors import AuthRefused, BatchpollError, ConfigError, InputFileError, UsageError
from .records import Record

__all__ = [
    "AuthRefused",
    "BatchpollError",
    "ConfigError",
    "InputFileError",
    "Record",
    "RunStats",
    "Secret",
    "Settings",
    "UsageError",
    "poll_all",
]
