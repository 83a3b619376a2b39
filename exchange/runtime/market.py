"""The engine runtime: one asyncio task owns a market's engine (single writer).

Flow of a command::

    submit() --queue--> engine task: stamp time, engine.process() (pure), serialise
                 |--> pending group --> writer task: one transaction (COPY)
                                          |--> after COMMIT: resolve the caller's
                                               future, then call subscribers in order

The engine task keeps processing the next commands while the previous group
is being committed (pipelining), so the group grows with load; but nothing a
command produced is visible to anyone before its group has committed. A
failing commit is retried with back-off and nothing is acknowledged
meanwhile. If the engine or the writer fails, the market stops as a whole:
every command not yet committed is refused (``MarketUnavailable``), and a
restart rebuilds the state from the journal. Only one process may run a
market (an advisory lock in PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from exchange.core.engine import MarketEngine
from exchange.core.model import Command, Event, Tick, command_to_dict
from exchange.runtime.clock import Clock
from exchange.runtime.committer import GroupCommitter
from exchange.runtime.journal import Entry, Journal
from exchange.runtime.snapshots import SnapshotStore, Snapshotter, recover

log = logging.getLogger(__name__)


class MarketUnavailable(RuntimeError):
    """The runtime is not running (starting, stopping or failed); the command's outcome
    is not committed unless it was acknowledged."""


class MarketBusy(RuntimeError):
    """The command queue is full (back-pressure): try again later."""


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
_Item = tuple[Command, "asyncio.Future | None", int, object]


class MarketRuntime:
    def __init__(self, engine: MarketEngine, journal: Journal, clock: Clock, *, max_batch: int = 2000,
                 queue_size: int = 50_000, keep_stats: bool = False, snapshots: SnapshotStore | None = None,
                 snapshotter: Snapshotter | None = None, committer: GroupCommitter | None = None) -> None:
        self.engine = engine
        self.snapshots = snapshots  # recovery starts from the newest valid snapshot (None: the whole journal)
        self.snapshotter = snapshotter  # seeded with the recovered state before the first command
        self.recovered_from = 0  # cmd_seq of the snapshot recovery started from (0: none)
        self.journal = journal
        self.committer = committer  # shared with the process's other markets (None: commit alone)
        self.clock = clock
        self.max_batch = max_batch
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._groups: asyncio.Queue[list[tuple[Entry, asyncio.Future | None, int]]] = asyncio.Queue(8)
        self._pending: set[asyncio.Future] = set()  # submitted, not yet resolved
        self.cmd_seq = 0
        self.committed_cmd_seq = 0  # last journal command that is durable
        self._journaled_ts = 0  # the time of journal command cmd_seq (what a snapshot of now is stamped with)
        self.committed_seq = 0  # last event seq that is durable
        self.subscribers: list[Subscriber] = []
        self.stats = Stats() if keep_stats else None
        self._tasks: list[asyncio.Task] = []
        self._lock_conn: asyncpg.Connection | None = None
        self.running = False
        self.closed = False
        self.failed: BaseException | None = None
        self.commit_failures = 0
        self.on_commit: Callable[[float, int], None] | None = None  # (seconds, commands) for metrics

    # ----------------------------------------------------------------- lifecycle
    async def start(self, verify: bool = True) -> None:
        """Take the single-writer lock, rebuild the engine from the journal, start the tasks."""
        if self.committer is not None:
            await self.committer.lock(self.journal.market_id)
        else:
            self._lock_conn = await self.journal.lock_writer()
        try:
            t = time.perf_counter()
            self.engine, self.cmd_seq, self.recovered_from = await recover(
                self.journal, self.snapshots, self.engine, verify=verify)
            self.committed_seq = self.engine.seq
            self.committed_cmd_seq = self.cmd_seq
            self._journaled_ts = self.engine.now
            self.clock.not_before(self.engine.now)
            log.info("market %s recovered %d commands (seq %d; from the snapshot at command %d, %d replayed) in "
                     "%.2fs, state %s", self.journal.market_id, self.cmd_seq, self.engine.seq, self.recovered_from,
                     self.cmd_seq - self.recovered_from, time.perf_counter() - t, self.engine.state_hash()[:16])
            if self.snapshotter is not None:
                self.snapshotter.seed(self.recovered_from)
            self.running = True
            self._tasks = [
                asyncio.create_task(self._engine_loop(), name="engine"),
                asyncio.create_task(self._writer_loop(), name="journal-writer"),
                asyncio.create_task(self._timer_loop(), name="timer"),
            ]
            await self.submit(Tick(0))  # list/open products due now
        except BaseException:
            await self._shutdown("market failed to start")
            raise

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Finish what was submitted (committed and acknowledged), then stop. After a
        failure, or if draining takes longer than ``drain_timeout`` (database down), stop
        anyway: what was not committed is refused, never acknowledged."""
        if self.closed:
            return
        was_running, self.running = self.running, False
        if was_running and self.failed is None:
            try:
                await asyncio.wait_for(self._drain(), drain_timeout)
            except TimeoutError:
                log.error("market %s: stopping with uncommitted commands (refused)", self.journal.market_id)
        await self._shutdown("market stopped")

    async def _drain(self) -> None:
        await self.queue.join()
        await self._groups.join()

    async def _shutdown(self, why: str) -> None:
        self.running = False
        self.closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._refuse_all(why)
        if self.committer is not None:
            try:
                await self.committer.unlock(self.journal.market_id)
            except Exception:  # noqa: BLE001 - the connection may be gone; the lock goes with it
                log.warning("could not release the writer lock cleanly", exc_info=True)
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            try:
                await self.journal.unlock_writer(conn)
            except Exception:  # noqa: BLE001 - the connection may be gone; the lock goes with it
                log.warning("could not release the writer lock cleanly", exc_info=True)

    def _refuse_all(self, why: str) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()
        while not self._groups.empty():
            self._groups.get_nowait()
            self._groups.task_done()
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(MarketUnavailable(why))
        self._pending.clear()

    def _fail(self, exc: BaseException) -> None:
        """An engine or writer failure: stop the whole market (from a task of its own)."""
        if self.failed is None:
            log.critical("market %s stopped: %r", self.journal.market_id, exc)
            self.failed = exc
        self.running = False
        asyncio.get_running_loop().create_task(self._shutdown(f"market stopped: {exc!r}"))

    # ----------------------------------------------------------------- submit
    def _new_future(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._pending.add(fut)  # removed when resolved (_resolve) or refused (_refuse_all)
        return fut

    def _resolve(self, fut: asyncio.Future | None, result: Result) -> None:
        if fut is not None:
            self._pending.discard(fut)
            if not fut.done():  # a caller may have given up (cancelled)
                fut.set_result(result)

    def _check_open(self) -> None:
        if not self.running:
            raise MarketUnavailable(f"market stopped: {self.failed!r}" if self.failed else "market is not running")

    async def submit(self, cmd: Command, origin: object = None) -> Result:
        """Queue a command and wait until its events are durable. The command's ``ts`` is
        stamped by the runtime when the engine takes it. ``origin`` reaches subscribers."""
        self._check_open()
        fut = self._new_future()
        await self.queue.put((cmd, fut, time.perf_counter_ns(), origin))
        if self.closed and not fut.done():  # the put completed after a shutdown
            fut.set_exception(MarketUnavailable("market stopped"))
        return await fut

    def enqueue(self, cmd: Command, origin: object = None, *, future: bool = False) -> asyncio.Future | None:
        """Queue without waiting: raises :class:`MarketBusy` when the queue is full. The
        outcome reaches the subscribers (with ``origin``), and the future if asked for."""
        self._check_open()
        fut = self._new_future() if future else None
        try:
            self.queue.put_nowait((cmd, fut, time.perf_counter_ns(), origin))
        except asyncio.QueueFull:
            if fut is not None:
                self._pending.discard(fut)
            raise MarketBusy(f"command queue full ({self.queue.maxsize})") from None
        return fut

    # ----------------------------------------------------------------- tasks
    async def _engine_loop(self) -> None:
        q = self.queue
        engine = self.engine
        clock = self.clock
        try:
            while True:
                items = [await q.get()]
                while len(items) < self.max_batch and not q.empty():
                    items.append(q.get_nowait())
                group = []
                for cmd, fut, t0, origin in items:
                    ts = clock.now_us()
                    # Never stamp before the engine's clock (a wall clock may step back): the
                    # journaled ts is then exactly the time the engine used.
                    cmd.ts = ts if ts > engine.now else engine.now
                    before = engine.seq
                    events = engine.process(cmd)
                    if not events:  # nothing happened (a tick with nothing due): nothing to persist
                        self._resolve(fut, Result(self.cmd_seq, [], t0))
                        continue
                    if engine.seq == before:
                        # A rejection that changed nothing: not journaled (replay does not need
                        # it), answered in order with the group so no answer overtakes another.
                        group.append((Entry(0, cmd, events, {}, origin), fut, t0))
                        continue
                    self.cmd_seq += 1
                    self._journaled_ts = cmd.ts
                    group.append((Entry(self.cmd_seq, cmd, events, command_to_dict(cmd), origin), fut, t0))
                if group:
                    snap = self.snapshotter
                    if snap is not None and snap.due(self.cmd_seq):  # between commands: a fork, ~ms
                        snap.capture(engine, self.cmd_seq, self._journaled_ts, self._committed_cmd)
                    await self._groups.put(group)
                for _ in items:
                    q.task_done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # An engine bug: the state may be ahead of the journal. Stop; what was not
            # committed is refused, and a restart replays the journal.
            self._fail(exc)

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
                while jrows:
                    try:
                        if self.committer is not None:
                            await self.committer.commit(self.journal.market_id, jrows, trows)
                        else:
                            await self.journal.write(jrows, trows)
                        break
                    except Exception as exc:  # retried until it succeeds: nothing is lost or acked early
                        self.commit_failures += 1
                        log.error("journal commit failed (%s); retrying in %.2fs, nothing acknowledged", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                elapsed = time.perf_counter() - t
                self.committed_seq = max(self.committed_seq, entries[-1].events[-1].seq)
                for e in reversed(entries):
                    if e.cmd_seq:
                        self.committed_cmd_seq = e.cmd_seq
                        break
                for e, fut, t0 in batch:
                    self._resolve(fut, Result(e.cmd_seq, e.events, t0))
                for sub in list(self.subscribers):
                    try:
                        sub(entries)
                    except Exception:  # a subscriber must never stop the market
                        log.exception("subscriber failed; removing it")
                        self.subscribers.remove(sub)
                if jrows:
                    self._record(elapsed, len(jrows))
                for _ in range(n_groups):
                    groups.task_done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)

    def _committed_cmd(self) -> int:
        """The last durable journal command; -1 once the market stopped (a snapshot waiting
        for a command that will not be committed by this process gives up)."""
        return -1 if self.closed else self.committed_cmd_seq

    def _record(self, elapsed: float, n: int) -> None:
        if self.stats is not None:
            self.stats.commits += 1
            self.stats.commands += n
            self.stats.commit_seconds.append(elapsed)
            self.stats.batch_sizes.append(n)
        if self.on_commit is not None:
            try:
                self.on_commit(elapsed, n)
            except Exception:  # metrics must never stop the market
                log.exception("on_commit hook failed")

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
