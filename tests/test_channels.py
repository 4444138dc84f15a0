"""The scheduler's two hand-offs: nothing posted or handed over is lost, duplicated or reordered."""

from __future__ import annotations

import math

import anyio
import pytest

from batchpoll._io.channels import Handoff, Mailbox

pytestmark = pytest.mark.anyio


async def test_a_wake_before_the_wait_is_not_lost() -> None:
    """A wake while the scheduler is busy makes its next wait return at once, like an Event."""
    box: Mailbox[int] = Mailbox()
    box.wake()
    with anyio.fail_after(5):
        await box.wait(math.inf)
    with anyio.move_on_after(0.05) as scope:  # the wake was used up
        await box.wait(math.inf)
    assert scope.cancelled_caught


async def test_posts_wake_the_waiter_and_stay_until_taken() -> None:
    """An item posted while the scheduler waits wakes it; a cancelled wait loses nothing."""
    box: Mailbox[int] = Mailbox()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(box.wait, math.inf)
            await anyio.wait_all_tasks_blocked()
            box.post(1)
    assert box.items.popleft() == 1
    with anyio.move_on_after(0) as scope:
        await box.wait(math.inf)
    assert scope.cancelled_caught
    box.post(2)  # after a cancelled wait, a post still lands and still wakes
    with anyio.fail_after(5):
        await box.wait(math.inf)
    assert list(box.items) == [2]


async def test_a_wait_ends_after_its_seconds() -> None:
    """With nothing posted, a wait returns after its timeout (the timer is the only wake)."""
    box: Mailbox[int] = Mailbox()
    started = anyio.current_time()
    with anyio.fail_after(5):
        await box.wait(0.01)
    assert anyio.current_time() - started >= 0.01
    assert not box.items


async def test_handoff_serves_idle_workers_in_order_and_ends_them_on_close() -> None:
    """Items go to waiting workers first come, first served; close ends every worker."""
    due: Handoff[int] = Handoff()
    got: dict[str, list[int]] = {"a": [], "b": []}

    async def worker(name: str) -> None:
        while (item := await due.get()) is not None:
            got[name].append(item)
            await anyio.wait_all_tasks_blocked()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a")
            tg.start_soon(worker, "b")
            await anyio.wait_all_tasks_blocked()
            for item in range(6):
                due.put(item)
            await anyio.wait_all_tasks_blocked()
            due.close()
    assert sorted(got["a"] + got["b"]) == list(range(6))
    assert got["a"], "both idle workers were given work"
    assert got["b"], "both idle workers were given work"
    assert got["a"] == sorted(got["a"])
    assert got["b"] == sorted(got["b"])


async def test_an_item_is_never_given_to_a_worker_that_left() -> None:
    """A worker cancelled while idle leaves no trap behind: the next item reaches a live one."""
    due: Handoff[str] = Handoff()
    with anyio.move_on_after(0):
        await due.get()
    due.put("x")
    with anyio.fail_after(5):
        assert await due.get() == "x"
    due.close()
    assert await due.get() is None
