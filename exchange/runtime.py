"""The engine runtime: one asyncio task owns a market's engine (single writer).

Flow of a command::

    submit() --queue--> engine task: stamp time, engine.process() (pure)
                 |--> pending group --> writer task: one transaction (COPY)
                                          |--> after COMMIT: resolve the caller's
                                               future, publish to subscribers

The engine task keeps processing the next commands while the previous group
is being committed (pipelining), so the group grows with load; but nothing a
command produced is visible to anyone before its group has committed. If a
commit fails it is retried with back-off, and nothing is acknowledged
meanwhile; the in-memory state is never ahead of what will be written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .clock import Clock
from .core.engine import MarketEngine
from .core.model import Command, Event, Tick
from .journal import Entry, Journal

log = logging.getLogger(__name__)


class MarketUnavailable(RuntimeError):
    """The runtime is not running (starting, stopping or failed)."""


@dataclass(slots=True)
class Result:
    """What a submitter gets back, after the commit: the command's events."""

    cmd_seq: int
    events: list[Event]
    received_ns: int = 0


@dataclass
class Stats:
    commands: int = 0
    commits: int = 0
    commit_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)


Subscriber = Callable[[list[Entry]], None]


class MarketRuntime:
    def __init__(self, engine: MarketEngine, journal: Journal, clock: Clock, *, max_batch: int = 2000,
                 queue_size: int = 50_000, keep_stats: bool = False) -> None:
        self.engine = engine
        self.journal = journal
        self.clock = clock
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[Command, asyncio.Future | None, int]] = asyncio.Queue(queue_size)
        self._groups: asyncio.Queue[list[tuple[Entry, asyncio.Future | None, int]]] = asyncio.Queue(8)
        self.cmd_seq = 0
        self.committed_seq = 0  # last event seq that is durable
        self.subscribers: list[Subscriber] = []
        self.stats = Stats() if keep_stats else None
        self._tasks: list[asyncio.Task] = []
        self.running = False
        self.failed: BaseException | None = None
        self.commit_failures = 0
        self.on_commit: Callable[[float, int], None] | None = None  # (seconds, commands) for metrics

    # ----------------------------------------------------------------- lifecycle
    async def start(self, verify: bool = True) -> None:
        """Rebuild the engine from the journal, then start the tasks."""
        t = time.perf_counter()
        self.cmd_seq = await self.journal.replay(self.engine, verify=verify)
        self.committed_seq = self.engine.seq
        self.clock.not_before(self.engine.now)
        log.info("market %s recovered %d commands (seq %d) in %.2fs, state %s", self.journal.market_id,
                 self.cmd_seq, self.engine.seq, time.perf_counter() - t, self.engine.state_hash()[:16])
        self.running = True
        self._tasks = [
            asyncio.create_task(self._engine_loop(), name="engine"),
            asyncio.create_task(self._writer_loop(), name="journal-writer"),
            asyncio.create_task(self._timer_loop(), name="timer"),
        ]
        await self.submit(Tick(0))  # list/open products due now

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Finish what was submitted (committed and acknowledged), then stop the tasks.
        After a failure, or if draining takes longer than ``drain_timeout`` (database
        down), the tasks are stopped anyway: what was not committed was not acknowledged."""
        was_running, self.running = self.running, False
        if was_running and self.failed is None:
            try:
                await asyncio.wait_for(self._drain(), drain_timeout)
            except asyncio.TimeoutError:
                log.error("market %s: stopping with uncommitted commands (not acknowledged)", self.journal.market_id)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._refuse_queued("market stopped")

    async def _drain(self) -> None:
        await self.queue.join()
        await self._groups.join()

    # ----------------------------------------------------------------- submit
    async def submit(self, cmd: Command) -> Result:
        """Queue a command; returns once its events are durable. The command's ``ts`` is
        set by the runtime from its clock when the engine takes it."""
        if not self.running:
            raise MarketUnavailable(str(self.failed) if self.failed else "market is not running")
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((cmd, fut, time.perf_counter_ns()))
        return await fut

    def submit_nowait(self, cmd: Command) -> asyncio.Future:
        """Like :meth:`submit` but raises ``asyncio.QueueFull`` instead of waiting for room."""
        if not self.running:
            raise MarketUnavailable("market is not running")
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((cmd, fut, time.perf_counter_ns()))
        return fut

    # ----------------------------------------------------------------- tasks
    async def _engine_loop(self) -> None:
        q = self.queue
        engine = self.engine
        clock = self.clock
        try:
            while True:
                first = await q.get()
                items = [first]
                while len(items) < self.max_batch and not q.empty():
                    items.append(q.get_nowait())
                group = []
                try:
                    for i, (cmd, fut, t0) in enumerate(items):
                        cmd.ts = clock.now_us()
                        events = engine.process(cmd)
                        if not events:  # nothing happened (a tick with nothing due): nothing to persist
                            if fut is not None and not fut.done():
                                fut.set_result(Result(self.cmd_seq, [], t0))
                            continue
                        self.cmd_seq += 1
                        group.append((Entry(self.cmd_seq, cmd, events), fut, t0))
                except Exception as exc:
                    # An engine bug. What was processed before stays consistent and is committed;
                    # the failing command and everything after it are refused, and the market stops.
                    for _, fut, _ in items[i:]:
                        if fut is not None and not fut.done():
                            fut.set_exception(MarketUnavailable(f"engine error: {exc!r}"))
                    if group:
                        await self._groups.put(group)
                    for _ in items:
                        q.task_done()
                    raise
                if group:
                    await self._groups.put(group)
                for _ in items:
                    q.task_done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _writer_loop(self) -> None:
        groups = self._groups
        try:
            while True:
                batch = await groups.get()
                n_groups = 1
                while not groups.empty():
                    batch.extend(groups.get_nowait())
                    n_groups += 1
                entries = [e for e, _, _ in batch]
                jrows, trows = self.journal.rows(entries, self.engine)
                t = time.perf_counter()
                delay = 0.05
                while True:
                    try:
                        await self.journal.write(jrows, trows)
                        break
                    except Exception as exc:  # retried until it succeeds: nothing is lost or acked early
                        self.commit_failures += 1
                        log.error("journal commit failed (%s); retrying in %.2fs, nothing acknowledged", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                elapsed = time.perf_counter() - t
                self.committed_seq = entries[-1].events[-1].seq
                if self.stats is not None:
                    self.stats.commits += 1
                    self.stats.commands += len(entries)
                    self.stats.commit_seconds.append(elapsed)
                    self.stats.batch_sizes.append(len(entries))
                if self.on_commit is not None:
                    self.on_commit(elapsed, len(entries))
                for e, fut, t0 in batch:
                    if fut is not None and not fut.done():
                        fut.set_result(Result(e.cmd_seq, e.events, t0))
                for sub in list(self.subscribers):
                    try:
                        sub(entries)
                    except Exception:  # a subscriber must never stop the market
                        log.exception("subscriber failed; removing it")
                        self.subscribers.remove(sub)
                for _ in range(n_groups):
                    groups.task_done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _timer_loop(self) -> None:
        """Send a Tick when the calendar has something due (openings, gate closures, deliveries)."""
        while True:
            nxt = self.engine.next_transition_us()
            if nxt is None:
                await asyncio.sleep(0.25)
                continue
            await asyncio.sleep(min(self.clock.wall_seconds_until(nxt), 0.25))
            if self.clock.now_us() >= nxt and self.running:
                try:
                    await self.submit(Tick(0))
                except MarketUnavailable:
                    return

    def _fail(self, exc: BaseException) -> None:
        log.critical("market %s stopped: %r", self.journal.market_id, exc)
        self.failed = exc
        self.running = False
        self._refuse_queued(f"market stopped: {exc!r}")

    def _refuse_queued(self, why: str) -> None:
        while not self.queue.empty():
            _, fut, _ = self.queue.get_nowait()
            self.queue.task_done()
            if fut is not None and not fut.done():
                fut.set_exception(MarketUnavailable(why))
