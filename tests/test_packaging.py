"""The public surface is what __init__ says it is."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import batchpoll


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and equals the public, non-module names the package binds."""
    public = sorted(
        name
        for name, value in vars(batchpoll).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    )
    assert batchpoll.__all__ == sorted(batchpoll.__all__)
    assert public == batchpoll.__all__


def test_python_dash_m_runs_the_cli() -> None:
    """python -m batchpoll --version prints the installed version."""
    out = subprocess.run(
        [sys.executable, "-m", "batchpoll", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"batchpoll {batchpoll.__version__}"
