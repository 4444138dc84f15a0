"""The library API: poll ids inside the caller's own event loop."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest
from helpers import FAST, KEY

import batchpoll
from batchpoll.simulator import SimSettings, running_simulator, truth

pytestmark = pytest.mark.anyio


async def test_poll_all_yields_one_record_per_distinct_id() -> None:
    """poll_all yields each distinct id's record, invalid ids included, with the API's status."""
    sim_settings = SimSettings(seed=2, api_key=KEY)
    ids = [f"lib-{i}" for i in range(50)] + ["lib-1", "has space"]
    async with running_simulator(sim_settings) as sim:
        settings = replace(FAST, base_url=sim.url)
        async with batchpoll.poll_all(ids, settings) as records:
            got = {r.progress_id: r.status async for r in records}
    assert set(got) == {*ids}
    assert got["has space"] == "invalid_input"
    assert all(got[f"lib-{i}"] == truth(f"lib-{i}", sim_settings)[0] for i in range(50))


async def test_leaving_early_stops_polling() -> None:
    """Breaking out after the first record stops the run instead of polling the rest."""
    ids = ["notfound-first"] + [f"slow-{i}" for i in range(200)]
    async with running_simulator(SimSettings(api_key=KEY)) as sim:
        settings = replace(FAST, base_url=sim.url, rate=20.0, burst=1)
        with anyio.fail_after(10):  # slow- ids never end: only stopping ends this block
            async with batchpoll.poll_all(ids, settings) as records:
                async for record in records:
                    assert record.status == "not_found"
                    break
    assert sim.stats.requests < 50


async def test_a_refused_key_raises_auth_refused() -> None:
    """A 401 surfaces as AuthRefused from the async with block."""
    async with running_simulator(SimSettings(api_key="other")) as sim:
        settings = replace(FAST, base_url=sim.url)
        with pytest.RaisesGroup(batchpoll.AuthRefused, flatten_subgroups=True):
            async with batchpoll.poll_all(["a"], settings) as records:
                async for _ in records:
                    pass
