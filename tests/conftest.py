"""Fixtures shared by the whole test suite."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run every ``pytest.mark.anyio`` test on asyncio, the only loop aiohttp supports."""
    return "asyncio"
