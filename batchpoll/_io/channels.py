"""The two hand-offs between the scheduler task and the workers, on the hot path of every poll.

Both are a deque plus bare asyncio futures rather than anyio memory streams or Events: each
anyio ``receive`` or ``Event()`` looks the async backend up and adds a checkpoint, which at
thousands of polls a second is a measurable share of the CPU, and aiohttp ties the engine to
asyncio anyway. anyio cancel scopes still cancel a task waiting here: they cancel the task,
and with it the future it awaits.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

T = TypeVar("T")


def _release(waiter: asyncio.Future[Any]) -> None:
    """Wake whoever awaits *waiter* with None, unless it was woken or cancelled already."""
    if not waiter.done():
        waiter.set_result(None)


class Mailbox(Generic[T]):
    """What the workers send back, plus wake-ups, for the one scheduler task.

    Nothing posted is ever lost by a wait ending early (timeout or cancellation): items stay
    in ``items`` until the scheduler takes them. A ``wake`` while the scheduler is not waiting
    makes its next ``wait`` return at once, as a set Event would.
    """

    __slots__ = ("_loop", "_waiter", "_woken", "items")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False

    def post(self, item: T) -> None:
        self.items.append(item)
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._woken = True
        elif not waiter.done():
            waiter.set_result(None)

    async def wait(self, seconds: float) -> None:
        """Return when something was posted or woken (now or before), or after *seconds*."""
        if self.items or self._woken:
            self._woken = False
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if seconds == math.inf else loop.call_later(seconds, _release, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            self._woken = False
            if timer is not None:
                timer.cancel()


class Handoff(Generic[T]):
    """Due items from the one scheduler to whichever worker is idle, in order.

    ``put`` never blocks: the scheduler hands out at most as many items as there are workers.
    ``get`` returns ``None`` once the hand-off is closed and empty, which ends a worker.
    """

    __slots__ = ("_closed", "_idle", "_items", "_loop")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._idle: deque[asyncio.Future[T | None]] = deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def put(self, item: T) -> None:
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():  # a worker cancelled while idle left a done future behind
                waiter.set_result(item)
                return
        self._items.append(item)

    async def get(self) -> T | None:
        if self._items:
            return self._items.popleft()
        if self._closed:
            return None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T | None] = loop.create_future()
        self._idle.append(waiter)
        return await waiter

    def close(self) -> None:
        """No more items: every idle worker, and every later ``get`` once empty, gets None."""
        self._closed = True
        while self._idle:
            _release(self._idle.popleft())


async def send_shielded(tx: MemoryObjectSendStream[T], item: T) -> None:
    """Send *item*, even while the sender is being cancelled; drop it if nobody receives any more.

    A finished record must reach the sink even while the run is cancelled. If the sink stage is
    gone (a stop whose sink was stuck past its grace gave up on the records still waiting), the
    record is not written, and ``--resume`` polls its id again: nothing is lost.
    """
    try:
        try:
            tx.send_nowait(item)
        except anyio.WouldBlock:
            with anyio.CancelScope(shield=True):
                await tx.send(item)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
