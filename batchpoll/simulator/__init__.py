"""The fake Cekura API that tests, the demo and the benchmarks talk to over real sockets.

The tree splits the pure parts from the server: ``settings`` (the knobs, checked once),
``fates`` (which answer an id gets on its n-th poll), ``policer`` (GCRA admit/refuse) and
``stats`` (what the server counts) import no asyncio, anyio or aiohttp; ``server`` is the
``aiohttp.web`` app around them and ``cli`` the ``batchpoll simulate`` command.
"""

from .cli import add_knobs, serve, settings_from_args
from .fates import NEVER, truth
from .server import SDK_PATH, STATS_PATH, Simulator, running_simulator
from .settings import SimSettings
from .stats import SimStats, max_in_window

__all__ = [
    "NEVER",
    "SDK_PATH",
    "STATS_PATH",
    "SimSettings",
    "SimStats",
    "Simulator",
    "add_knobs",
    "max_in_window",
    "running_simulator",
    "serve",
    "settings_from_args",
    "truth",
]
