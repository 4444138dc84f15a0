"""Fixtures shared by the whole test suite."""

from collections.abc import Iterator

import pytest
import structlog
from helpers import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    """Run every ``pytest.mark.anyio`` test on asyncio, the only loop aiohttp supports."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A clock at t = 1000 s that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test configures logging afresh and leaves structlog's defaults behind."""
    yield
    structlog.reset_defaults()
