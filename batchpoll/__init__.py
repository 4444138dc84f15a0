"""batchpoll: poll many Cekura progress ids at once, within the API's limits, losing none."""

import importlib.metadata

from .config import Settings
from .errors import AuthRefused, BatchpollError, ConfigError, InputFileError, UsageError
from .records import Record

__version__ = importlib.metadata.version("batchpoll")

__all__ = [
    "AuthRefused",
    "BatchpollError",
    "ConfigError",
    "InputFileError",
    "Record",
    "Settings",
    "UsageError",
]
