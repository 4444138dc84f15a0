"""batchpoll: poll many Cekura progress ids at once, within the API's limits, losing none."""

from ._version import __version__ as __version__
from .api import poll_all
from .config import Secret, Settings
from .errors import AuthRefused, BatchpollError, ConfigError, InputFileError, UsageError
from .records import Record
from .stats import RunStats

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
