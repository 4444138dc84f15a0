"""The run's I/O loop: reader → scheduler → workers → scheduler → sink.

::

    items ──reader──▶ new ids (stream, READ_AHEAD) ──┐
                                                     ▼
                 ┌────────── Scheduler (pure): what to do next ──────────┐
                 │ due slots (Handoff, ≤ concurrency)   results (Mailbox) │
                 ▼                                           ▲            ▼
           N workers ── ApiClient.poll ──────────────────────┘   records (stream) ──▶ sink

Every decision is the scheduler's (``_core/scheduler.py``); the engine only carries the facts
to it and does what it answers. Each id's state (a ``Slot``) belongs to one task at a time,
the scheduler's or the worker's it was handed to, so none of it needs a lock. The loop waits
on one ``Mailbox`` for whatever comes first: a result, a newly read id, or the next due time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from random import Random
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from structlog.typing import FilteringBoundLogger

from .._core.budget import Budget, LocalBudget, StoreBudget
from .._core.config import Settings
from .._core.lifecycle import SharedMillisecond, Slot, note_sent
from .._core.scheduler import Emit, Log, Scheduler, SharePause, Signal, Wait
from .._core.source import Item
from .._core.stats import RunStats
from ..errors import BatchpollError, RateStoreError
from ..records import Outcome, Record
from .channels import Handoff, Mailbox, send_shielded
from .heartbeat import HEARTBEAT_S, beat
from .intake import read_ids
from .ratestore import SharedBudget
from .sink import SINK_BUFFER, RecordSink, write_records

#: How many read ids may wait between the reader and the scheduler.
READ_AHEAD: Final = 1024
#: After --deadline, how long ids still coming from the input are read (and timed out).
READ_AFTER_DEADLINE_S: Final = 3.0

Poller = Callable[[str], Awaitable[Outcome]]
_NewIds = MemoryObjectReceiveStream[tuple[float, str]]
_Records = MemoryObjectSendStream[Record]


def _collapse(group: BaseExceptionGroup[Exception]) -> BaseException:
    """One error out of a task group's: several workers meeting the same 401 is one error."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    fatal = [exc for exc in leaves if isinstance(exc, BatchpollError)]
    return fatal[0] if len(fatal) == len(leaves) else group


class Engine:
    """Polls every id of one run (one ``run`` per engine); see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        poll: Poller,
        sink: RecordSink,
        *,
        log: FilteringBoundLogger,
        stats: RunStats | None = None,
        rng: Random | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        budget: SharedBudget | None = None,
    ) -> None:
        """*budget*: a rate budget and pause shared with other processes (--rate-store)."""
        self.settings = settings
        self.stats = stats or RunStats(fail_on=settings.fail_on)
        self._poll = poll
        self._sink = sink
        self._log = log
        # Not the loop's clock: uvloop's counts whole milliseconds, too coarse to space
        # requests at thousands a second. Both count CLOCK_MONOTONIC, so the deadline's cancel
        # scope (on the loop's clock) agrees with this one to within a millisecond.
        self._clock: Callable[[], float] = time.monotonic
        self._rng = rng or Random()
        self._heartbeat_s = heartbeat_s
        self._shared = budget
        self._mailbox: Mailbox[tuple[Slot, Outcome]] = Mailbox()
        # Cancelled at --deadline, or early when a pause would outlast it; made by run().
        self._polling: anyio.CancelScope | None = None
        # Reader, scheduler and workers, cancelled by stop(); made by run().
        self._work_scope: anyio.CancelScope | None = None
        self.stopped = False

    def stop(self) -> None:
        """Stop at once: no new polls, requests in flight cancelled, reading ended.

        Records of ids that already finished are still written; ids without one get none, so
        a later ``--resume`` finishes them. ``run`` then returns normally.
        """
        self.stopped = True
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def run(self, items: AsyncIterable[Item]) -> RunStats:
        """Poll every id in *items* to exactly one record; raise only what ends the run."""
        s, shared = self.settings, self._shared
        budget: Budget = (
            LocalBudget(s.rate, s.burst) if shared is None else StoreBudget(shared.set_rate)
        )
        now = self._clock()
        sched = Scheduler.for_run(
            s,
            budget,
            now=now,
            wall_now=time.time(),
            stats=self.stats,
            rng=self._rng,
            shared=shared is not None,
        )
        new_tx, new_rx = anyio.create_memory_object_stream[tuple[float, str]](READ_AHEAD)
        rec_tx, rec_rx = anyio.create_memory_object_stream[Record](SINK_BUFFER)
        shards = s.shard.count if s.shard and shared else 1
        fatal: BaseExceptionGroup[Exception] | None = None
        async with anyio.create_task_group() as outer:
            outer.start_soon(beat, self.stats, self._log, self._clock, self._heartbeat_s)
            async with anyio.create_task_group() as sink_stage:
                sink_stage.start_soon(write_records, rec_rx, self._sink, self._written)
                with rec_tx, new_rx:
                    try:
                        async with anyio.create_task_group() as tg:
                            self._work_scope = tg.cancel_scope
                            if self.stopped:
                                tg.cancel_scope.cancel()
                            tg.start_soon(
                                lambda: read_ids(
                                    items,
                                    new_tx,
                                    rec_tx.clone(),
                                    started=now,
                                    settings=s,
                                    shards=shards,
                                    stats=self.stats,
                                    log=self._log,
                                    wake=self._mailbox.wake,
                                )
                            )
                            await self._poll_until_done(sched, new_rx, rec_tx)
                            # Done: a reader still waiting on its input (after a deadline in
                            # follow mode) has nothing left to give this run.
                            tg.cancel_scope.cancel()
                    except* Exception as group:
                        # Kept until the sink has written every record that did finish.
                        fatal = group
            outer.cancel_scope.cancel()
        if fatal is not None:
            raise _collapse(fatal)
        return self.stats

    async def _poll_until_done(self, sched: Scheduler, new_rx: _NewIds, rec_tx: _Records) -> None:
        due: Handoff[Slot] = Handoff()
        polling = self._polling = anyio.CancelScope(deadline=sched.deadline_at)
        with polling:
            async with anyio.create_task_group() as workers:
                for _ in range(self.settings.concurrency):
                    workers.start_soon(self._work, due)
                try:
                    await self._loop(sched, new_rx, due, rec_tx)
                finally:
                    due.close()
        if polling.cancelled_caught:
            self._take_results(sched)  # answers that made it back still count
            await self._do_all(sched.expire_all(self.settings.deadline), rec_tx)
            # Ids still to be read are timed out too, as far as the input gives them in a
            # bounded time: a producer that keeps its pipe open (follow mode) must not hold the
            # run past its deadline. Ids it sends later get no record; --resume finishes them.
            with anyio.move_on_after(READ_AFTER_DEADLINE_S):
                async for _, pid in new_rx:
                    await send_shielded(rec_tx, sched.timed_out(pid))

    async def _work(self, due: Handoff[Slot]) -> None:
        post, poll, get = self._mailbox.post, self._poll, due.get
        clock, shared, stats = self._clock, SharedMillisecond(), self.stats
        while (slot := await get()) is not None:
            # Noted here, not when the scheduler hands the slot over: a slot still waiting for
            # a worker when the run is cancelled was never sent, and its record must say so.
            note_sent(slot, shared(clock()))
            stats.requests += 1
            post((slot, await poll(slot.pid)))

    async def _loop(
        self, sched: Scheduler, new_rx: _NewIds, due: Handoff[Slot], rec_tx: _Records
    ) -> None:
        clock, mailbox = self._clock, self._mailbox
        while True:
            self._take_results(sched)
            while sched.wants_new:
                try:
                    sched.add_new(*new_rx.receive_nowait())
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    sched.input_done()
            action = sched.next(clock())
            if isinstance(action, Slot):
                due.put(action)  # at most `concurrency` are in flight: a worker is idle
            elif isinstance(action, Wait):
                await mailbox.wait(action.until - clock())
            elif action is Signal.DONE:
                return
            elif action is Signal.ASK_GRANT:
                await self._ask_grant(sched, rec_tx)
            else:
                await self._do(action, rec_tx)

    async def _ask_grant(self, sched: Scheduler, rec_tx: _Records) -> None:
        """The shared store's turn for the held slot; on a store that refused for too long,
        the answers that came in meanwhile are written before the error ends the run."""
        assert self._shared is not None
        try:
            wait = await self._shared.reserve()
        except RateStoreError:
            self._take_results(sched)
            await self._do_all(sched.drain(), rec_tx)
            raise
        sched.granted(self._clock() + wait)

    def _take_results(self, sched: Scheduler) -> None:
        items, clock = self._mailbox.items, self._clock
        while items:
            slot, outcome = items.popleft()
            sched.result(slot, outcome, clock())

    async def _do_all(
        self, actions: Sequence[Emit | Log | SharePause | Signal], rec_tx: _Records
    ) -> None:
        for action in actions:
            await self._do(action, rec_tx)

    async def _do(self, action: Emit | Log | SharePause | Signal, rec_tx: _Records) -> None:
        if isinstance(action, Emit):
            await send_shielded(rec_tx, action.record)
        elif isinstance(action, Log):
            getattr(self._log, action.level)(action.event, **action.fields)
        elif isinstance(action, SharePause):
            assert self._shared is not None
            await self._shared.pause(action.seconds)
        elif action is Signal.CUT_SHORT:
            assert self._polling is not None, "results arrive only while polling"
            self._polling.cancel()

    def _written(self, batch: Sequence[Record]) -> None:
        for rec in batch:
            if self.stats.add(rec):
                self._log.warning(
                    "id_finished",
                    progress_id=rec.progress_id,
                    status=rec.status,
                    polls=rec.polls,
                    error=rec.error,
                )
