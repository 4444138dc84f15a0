"""The fake Cekura API that tests, the demo and the benchmarks talk to over real sockets."""

from .server import SimSettings, running_simulator, truth

__all__ = ["SimSettings", "running_simulator", "truth"]
