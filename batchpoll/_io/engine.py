"""The run as a bounded pipeline: reader → scheduler → workers → scheduler → sink.

::

    items ──reader──▶ new ids (stream, READ_AHEAD) ──┐
                                                     ▼
                 ┌──────────── scheduler: TimingWheel of Slots, Gcra, pause ───────────┐
                 │ due slots (Handoff, ≤ concurrency)         results (Mailbox)     │
                 ▼                                                 ▲                ▼
           N workers ── ApiClient.poll ────────────────────────────┘     records (stream) ──▶ sink

Each id's state (a ``Slot``) belongs to one task at a time, the scheduler or the one worker it
handed the slot to, so none of it needs a lock. The scheduler waits on one
``Mailbox`` for whatever comes first: a worker's result, a newly read id, or the next due time.
Waiting belongs to the scheduler's heap, never to a sleeping task per id.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import replace
from random import Random
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from structlog.typing import FilteringBoundLogger

from .._core.adaptive import Aimd
from .._core.config import Settings
from .._core.lifecycle import Policy, SharedMillisecond, Slot, advance, expired, finish, note_sent
from .._core.ratelimit import Gcra, paced
from .._core.schedule import TimingWheel
from .._core.source import InvalidInput, Item
from .._core.stats import Rate, RunStats, cause_of, facts
from ..errors import BatchpollError, RateStoreError
from ..records import IN_PROGRESS, Answer, Outcome, Record, Throttled, Transient
from ..records import TERMINAL_STATUSES as TERMINAL
from .channels import Handoff, Mailbox
from .ratestore import SharedBudget
from .sink import SINK_BUFFER, RecordSink, write_records

#: How many read ids may wait between the reader and the scheduler.
READ_AHEAD: Final = 1024
#: After --deadline, how long ids still coming from the input are read (and timed out).
READ_AFTER_DEADLINE_S: Final = 3.0
#: How many distinct unknown statuses are logged (each once); past that, no more.
MAX_UNKNOWN_STATUSES: Final = 100
#: Seconds between two heartbeat log events.
HEARTBEAT_S: Final = 10.0
#: Bounds on how late (s) the timing wheel may let a re-poll fall due.
MIN_RESOLUTION_S: Final = 0.001
MAX_RESOLUTION_S: Final = 0.05

Poller = Callable[[str], Awaitable[Outcome]]
# Newly read ids with the (monotonic) time they were read, which is when they fall due.
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
        # A rate budget and pause shared with other processes (--rate-store), or None.
        self._budget = budget
        self._grant: float | None = None  # when the held slot's shared grant lets it go
        self._share_pause: float | None = None  # a pause (s) still to tell the other processes
        self._policy = Policy(
            interval=settings.interval,
            max_interval=settings.max_interval,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
        self._limiter = Gcra(settings.rate, settings.burst)
        self._set_rate(settings.rate)  # paced, like every later change of rate
        # Re-polls may come out up to one bucket late: 1% of the interval (1 to 50 ms) costs
        # nothing a user would notice, and 100k ids waiting at a 5 s interval then share a few
        # hundred buckets instead of holding tens of thousands of one-item lists.
        resolution = min(MAX_RESOLUTION_S, max(MIN_RESOLUTION_S, settings.interval / 100))
        self._queue: TimingWheel[Slot] = TimingWheel(resolution)
        self._shared_ms = SharedMillisecond()
        self._mailbox: Mailbox[tuple[Slot, Outcome]] = Mailbox()
        self._in_flight: set[Slot] = set()
        # A picked slot waiting for the limiter, a pause or a shared grant.
        self._held: Slot | None = None
        # How late a wake-up may be booked as on time (see _dispatch): timers fire up to a
        # millisecond late (epoll and uvloop count whole milliseconds), so forgive that much,
        # but never more than one emission interval, so at most one extra request per window.
        self._slack = min(0.001, 1.0 / settings.rate)
        self._next_new: tuple[float, str] | None = None
        self._reader_done = False
        self._paused_until = -math.inf
        self._aimd = Aimd(settings.rate)
        self._deadline_at = math.inf
        # Cancelled at --deadline, or early when a pause would outlast it; made by run().
        self._polling: anyio.CancelScope | None = None
        # Reader, scheduler and workers, cancelled by stop(); made by run().
        self._work_scope: anyio.CancelScope | None = None
        self.stopped = False
        self._unknown_statuses: set[str] = set()

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
        self._policy = replace(self._policy, wall_offset=time.time() - self._clock())
        new_tx, new_rx = anyio.create_memory_object_stream[tuple[float, str]](READ_AHEAD)
        rec_tx, rec_rx = anyio.create_memory_object_stream[Record](SINK_BUFFER)
        fatal: BaseExceptionGroup[Exception] | None = None
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._heartbeat)
            async with anyio.create_task_group() as sink_stage:
                sink_stage.start_soon(write_records, rec_rx, self._sink, self._written)
                with rec_tx, new_rx:
                    try:
                        async with anyio.create_task_group() as tg:
                            self._work_scope = tg.cancel_scope
                            if self.stopped:
                                tg.cancel_scope.cancel()
                            tg.start_soon(self._read, items, new_tx, rec_tx.clone())
                            await self._poll_until_done(new_rx, rec_tx)
                            # Done: a reader still waiting on its input (after a deadline in
                            # follow mode) has nothing left to give this run.
                            tg.cancel_scope.cancel()
                    except* Exception as group:
                        # Keep it until the sink has written every record that did finish.
                        fatal = group
            outer.cancel_scope.cancel()
        if fatal is not None:
            raise _collapse(fatal)
        return self.stats

    # -- reader ---------------------------------------------------------------------------

    async def _read(
        self,
        items: AsyncIterable[Item],
        new_tx: MemoryObjectSendStream[tuple[float, str]],
        rec_tx: _Records,
    ) -> None:
        started = self._clock()
        async with new_tx, rec_tx:
            async for item in items:
                self.stats.ids += 1
                if isinstance(item, InvalidInput):
                    await rec_tx.send(
                        Record(
                            progress_id=item.text,
                            status="invalid_input",
                            error=item.reason,
                            input_line=item.line_no,
                            input_sha256=item.sha256,
                        )
                    )
                    continue
                # A new id has been due since the run started, so earliest-due-first polls
                # every id once before any re-poll that fell due later. Its read time would
                # not do: the reader reads only a little ahead, so once the run is saturated
                # every overdue re-poll would beat every unread id, for ever.
                # send() yields to the loop on every item even with room in the buffer; at one
                # id per loop turn, new ids would trickle in behind a busy run's re-polls.
                try:
                    new_tx.send_nowait((started, item))
                except anyio.WouldBlock:
                    await new_tx.send((started, item))
                self._mailbox.wake()
        self.stats.input_done = True
        shards = self.settings.shard.count if self.settings.shard and self._budget else 1
        best = self.stats.ids * shards / self.settings.rate
        self._log.info("input_read", ids=self.stats.ids, best_interval_s=round(best, 3))
        if best > self.settings.max_interval:
            self._log.warning(
                "rate_too_low",
                ids=self.stats.ids,
                rate=self.settings.rate,
                best_interval_s=round(best, 3),
                max_interval=self.settings.max_interval,
                hint="each id can be polled at best every ids/rate seconds",
            )
        self._mailbox.wake()

    # -- scheduler --------------------------------------------------------------------------

    async def _poll_until_done(
        self,
        new_rx: _NewIds,
        rec_tx: _Records,
    ) -> None:
        s = self.settings
        if s.deadline is not None:
            self._deadline_at = self._clock() + s.deadline
        due: Handoff[Slot] = Handoff()
        self._polling = anyio.CancelScope(deadline=self._deadline_at)
        with self._polling as scope:
            async with anyio.create_task_group() as workers:
                for _ in range(s.concurrency):
                    workers.start_soon(self._work, due)
                try:
                    await self._dispatch(new_rx, due, rec_tx)
                finally:
                    due.close()
        if scope.cancelled_caught:
            await self._expire_all(new_rx, rec_tx)

    async def _work(self, due: Handoff[Slot]) -> None:
        post, poll, get = self._mailbox.post, self._poll, due.get
        clock, shared, stats = self._clock, self._shared_ms, self.stats
        while (slot := await get()) is not None:
            # Noted here, not when the scheduler hands the slot over: a slot still waiting for
            # a worker when the run is cancelled was never sent, and its record must say so.
            note_sent(slot, shared(clock()))
            stats.requests += 1
            post((slot, await poll(slot.pid)))

    async def _dispatch(
        self,
        new_rx: _NewIds,
        due: Handoff[Slot],
        rec_tx: _Records,
    ) -> None:
        concurrency = self.settings.concurrency
        while True:
            await self._take_results(rec_tx)
            now = self._clock()
            if len(self._in_flight) >= concurrency:
                await self._mailbox.wait(math.inf)
                continue
            slot = self._held
            was_held = slot is not None
            if slot is not None:
                self._held = None
            else:
                slot = self._pick(new_rx, now)
            if slot is None:
                if self._reader_done and not self._in_flight and not self._queue:
                    return
                next_at = self._queue.next_due()
                await self._mailbox.wait(math.inf if next_at is None else next_at - now)
                continue
            if expired(slot, now, self._policy):
                await self._emit(rec_tx, finish(slot, "timed_out", self._policy))
                continue
            if self._budget is not None:
                if not await self._shared_turn(slot, now, rec_tx):
                    continue
                now = self._clock()
            else:
                ready_at = max(self._paused_until, now + self._limiter.wait_time(now))
                if ready_at > now:
                    self._held = slot
                    await self._mailbox.wait(ready_at - now)
                    continue
                # A slot that waited for the limiter was woken by a timer, a little late:
                # booked when it became sendable, up to self._slack ago, that lateness does not
                # pile up into a lower rate; any window of t s holds at most
                # rate*(t + slack) + burst requests, one more at the very most. A slot sendable
                # when picked waited on no timer and is booked now: forgiving it too made the
                # server count 202 in a second at --rate 200 (arrival jitter on top).
                if was_held:
                    self._limiter.book_late(now, self._slack)
                else:
                    self._limiter.reserve(now)
            self._in_flight.add(slot)
            self.stats.in_flight = len(self._in_flight)
            # At most `concurrency` are in flight, so a worker is idle or about to be.
            due.put(slot)

    async def _shared_turn(self, slot: Slot, now: float, rec_tx: _Records) -> bool:
        """With a shared budget: whether *slot* may go now; if not, it is held until it may.

        The grant is booked in Redis before the wait (the store's clock decides), so a held
        slot keeps its grant; a pause learnt locally meanwhile voids it, since sending on it
        would go out during the pause. Raises RateStoreError when the store refused for too
        long, after turning the answers that came in meanwhile into records.
        """
        assert self._budget is not None
        if self._paused_until > now:
            self._grant = None
            self._held = slot
            await self._mailbox.wait(self._paused_until - now)
            return False
        if self._grant is None:
            # Held while Redis answers, so a deadline cancelling the wait still finds it.
            self._held = slot
            try:
                wait = await self._budget.reserve()
            except RateStoreError:
                # Answers that came in while the store refused are records to keep, not lose.
                await self._take_results(rec_tx)
                raise
            self._held = None
            now = self._clock()
            self._grant = now + wait
        if self._grant > now:
            self._held = slot
            await self._mailbox.wait(self._grant - now)
            return False
        self._grant = None
        return True

    def _pick(self, new_rx: _NewIds, now: float) -> Slot | None:
        """The earliest-due slot: a re-poll from the queue or a newly read id, or None."""
        if self._next_new is None and not self._reader_done:
            try:
                self._next_new = new_rx.receive_nowait()
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                self._reader_done = True
        due = self._queue.next_due()
        if self._next_new is not None and (due is None or self._next_new[0] < due):
            pid = self._next_new[1]
            self._next_new = None
            return Slot(pid)
        return self._queue.pop_due(now)

    async def _take_results(self, rec_tx: _Records) -> None:
        items = self._mailbox.items
        while items:
            slot, outcome = items.popleft()
            self._in_flight.discard(slot)
            self.stats.in_flight = len(self._in_flight)
            now = self._clock()
            self._note(slot, outcome, now)
            step = advance(slot, outcome, self._policy, now, self._rng)
            if isinstance(step, Record):
                await self._emit(rec_tx, step)
            else:
                self._queue.push(step, slot)
        if self._share_pause is not None and self._budget is not None:
            seconds, self._share_pause = self._share_pause, None
            await self._budget.pause(seconds)

    def _note(self, slot: Slot, outcome: Outcome, now: float) -> None:
        """Learn what one outcome says about the run: throttling, retries, odd statuses."""
        match outcome:
            case Throttled(retry_after=retry_after):
                self.stats.throttled += 1
                if retry_after is not None:
                    # Any wait the server named pauses the run, whatever its number type:
                    # a class pattern here once let the (int) cap through unhonoured.
                    self._pause(now, now + float(retry_after), outcome.reason)
                elif self._aimd.throttled(now):
                    self._set_rate(self._aimd.rate)
                    self.stats.lowest_rate = self._aimd.lowest
                    self._log.info("rate_lowered", rate=round(self._aimd.rate, 3))
                return
            case Transient(reason=reason):
                self.stats.retries += 1
                self.stats.retry_causes[cause_of(reason)] += 1
                self._log.debug("poll_failed", progress_id=slot.pid, reason=reason)
                return
            case Answer(status=status) if (
                status != IN_PROGRESS
                and status not in TERMINAL
                and status not in self._unknown_statuses
                and len(self._unknown_statuses) < MAX_UNKNOWN_STATUSES
            ):
                self._unknown_statuses.add(status)
                self._log.warning("unknown_status", status=status, progress_id=slot.pid)
                if len(self._unknown_statuses) == MAX_UNKNOWN_STATUSES:
                    # A server inventing a status per answer would otherwise grow the set and
                    # the log without end.
                    self._log.warning("unknown_statuses_not_logged", after=MAX_UNKNOWN_STATUSES)
        if self._aimd.clean(now):
            self._set_rate(self._aimd.rate)

    def _set_rate(self, rate: float) -> None:
        """Book at *rate*, less the headroom, locally and in the shared budget."""
        rate = paced(rate)
        self._limiter.set_rate(rate)
        if self._budget is not None:
            self._budget.set_rate(rate)

    def _pause(self, now: float, until: float, reason: str) -> None:
        """Hold every request until *until* (monotonic s), as a Retry-After asked."""
        if until <= self._paused_until:
            return
        if until >= self._deadline_at:
            # Sleeping through the pause could only end at the deadline: end the ids now.
            self._log.warning("pause_outlasts_deadline", seconds=round(until - now, 3))
            assert self._polling is not None, "results arrive only while polling"
            self._polling.cancel()
            return
        self.stats.paused_s += until - max(now, self._paused_until)
        self._paused_until = until
        self._share_pause = until - now  # told to the other processes by _take_results
        self._log.info("run_paused", seconds=round(until - now, 3), reason=reason)

    async def _expire_all(
        self,
        new_rx: _NewIds,
        rec_tx: _Records,
    ) -> None:
        """The run's deadline passed: every id without a record gets ``timed_out``."""
        self._log.warning("deadline_reached", deadline_s=self.settings.deadline)
        await self._take_results(rec_tx)  # answers that made it back still count
        left = [*self._in_flight, *self._queue.pop_all()]
        if self._held is not None:
            left.append(self._held)
        if self._next_new is not None:
            left.append(Slot(self._next_new[1]))
        self._in_flight.clear()
        self.stats.in_flight = 0
        for slot in left:
            await self._emit(rec_tx, finish(slot, "timed_out", self._policy))
        # Ids still to be read are timed out too, as far as the input gives them in a bounded
        # time: a producer that keeps its pipe open (follow mode) must not hold the run past
        # its deadline. Ids it sends later get no record, and --resume finishes them.
        with anyio.move_on_after(READ_AFTER_DEADLINE_S):
            async for _, pid in new_rx:
                await self._emit(rec_tx, finish(Slot(pid), "timed_out", self._policy))

    @staticmethod
    async def _emit(rec_tx: _Records, record: Record) -> None:
        try:
            try:
                rec_tx.send_nowait(record)
            except anyio.WouldBlock:
                # Shielded: a finished record must reach the sink even while the run is
                # cancelled.
                with anyio.CancelScope(shield=True):
                    await rec_tx.send(record)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The sink stage is gone: a stop whose sink was stuck past its grace gave up on
            # the records still waiting. This one is not written either, so --resume polls
            # the id again: nothing is lost.
            pass

    # -- sink and heartbeat -----------------------------------------------------------------

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

    async def _heartbeat(self) -> None:
        """Every few seconds, the facts the live progress view would show, as a log event."""
        rate = Rate()
        rate.sample(self._clock(), self.stats.requests)
        while True:
            await anyio.sleep(self._heartbeat_s)
            st = self.stats
            now_rate = rate.sample(self._clock(), st.requests)
            self._log.info("heartbeat", read=st.ids, **facts(st, now_rate).as_log())
