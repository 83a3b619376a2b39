"""The engine runtime: a market's engine, its single writer, and the journal behind it.

Flow of a command::

    submit() --queue--> scheduler pass: stamp time, engine.process() (pure), serialise
                 |--> outbox --> scheduler: one transaction (COPY) with other markets' outboxes
                                    |--> after COMMIT: resolve the caller's future, then
                                         call subscribers in order

The engine steps and the commits of every market of a process are run by one task, the
process's :class:`~exchange.runtime.committer.GroupCommitter` (a market run alone gets one of
its own). The engine keeps processing the next commands while the previous group is being
committed (pipelining), so the group grows with load; but nothing a command produced is
visible to anyone before its group has committed. A failing commit is retried with back-off
and nothing is acknowledged meanwhile. If the engine fails, the market stops as a whole:
every command not yet committed is refused (``MarketUnavailable``), and a restart rebuilds
the state from the journal. Only one process may run a market (an advisory lock in
PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from exchange.core.engine import MarketEngine
from exchange.core.model import Command, Event, Tick
from exchange.runtime.clock import Clock
from exchange.runtime.committer import Group, GroupCommitter
from exchange.runtime.journal import Entry, Journal, command_json
from exchange.runtime.snapshots import SnapshotStore, Snapshotter, recover

log = logging.getLogger(__name__)


#: how long a stopping market waits for a journal transaction of it still in flight
SETTLE_TIMEOUT_S = 30.0


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
        self.market_id: str = journal.market_id
        # the process's scheduler and group commit, shared with its other markets (None: one of its own)
        self._own_committer = committer is None
        self.committer = GroupCommitter(journal.pool, in_flight=1) if committer is None else committer
        self.clock = clock
        self.max_batch = max_batch
        # processed, not yet committed: at this many the engine waits for the next COMMIT (back-pressure)
        self.max_uncommitted = 4 * max_batch
        self.queue_size = queue_size
        self._queue: deque[_Item] = deque()
        self._space = asyncio.Event()  # set while the queue has room (submit waits on it when full)
        self._space.set()
        # processed, not yet committing: the entries, and for each its caller's future and receipt time
        self._outbox: list[Entry] = []
        self._outbox_rows = 0  # of the outbox's entries, those journaled (not quiet rejections)
        self._waiters: list[tuple[asyncio.Future | None, int]] = []
        self._committing = 0  # commands in the group being committed
        self._pending: set[asyncio.Future] = set()  # submitted, not yet resolved
        self.cmd_seq = 0
        self.committed_cmd_seq = 0  # last journal command that is durable
        self._journaled_ts = 0  # the time of journal command cmd_seq (what a snapshot of now is stamped with)
        self.committed_seq = 0  # last event seq that is durable
        self.subscribers: list[Subscriber] = []
        self.stats = Stats() if keep_stats else None
        self._tasks: list[asyncio.Task] = []
        self.running = False
        self.closed = False
        self._shutting_down: asyncio.Task | None = None  # a shutdown a failure started
        self._unlocking: asyncio.Task | None = None  # the lock's release, after a transaction that outlived the stop
        self.failed: BaseException | None = None
        self.commit_failures = 0
        self.on_commit: Callable[[float, int], None] | None = None  # (seconds, commands) for metrics

    def queued(self) -> int:
        """Commands submitted, not yet through the engine."""
        return len(self._queue)

    def uncommitted(self) -> int:
        """Commands through the engine, not yet committed (nor answered)."""
        return len(self._outbox) + self._committing

    # ----------------------------------------------------------------- lifecycle
    async def start(self, verify: bool = True) -> None:
        """Take the single-writer lock, rebuild the engine from the journal, join the scheduler."""
        if self._own_committer:
            self.committer.start()
        try:
            await self.committer.lock(self.market_id)
        except BaseException:
            if self._own_committer:
                await self.committer.stop()
            raise
        try:
            t = time.perf_counter()
            self.engine, self.cmd_seq, self.recovered_from = await recover(
                self.journal, self.snapshots, self.engine, verify=verify)
            self.committed_seq = self.engine.seq
            self.committed_cmd_seq = self.cmd_seq
            self._journaled_ts = self.engine.now
            self.clock.not_before(self.engine.now)
            log.info("market %s recovered %d commands (seq %d; from the snapshot at command %d, %d replayed) in "
                     "%.2fs, state %s", self.market_id, self.cmd_seq, self.engine.seq, self.recovered_from,
                     self.cmd_seq - self.recovered_from, time.perf_counter() - t, self.engine.state_hash()[:16])
            if self.snapshotter is not None:
                self.snapshotter.seed(self.recovered_from)
            self.committer.attach(self)
            self.running = True
            self._tasks = [asyncio.create_task(self._timer_loop(), name="timer")]
            await self.submit(Tick(0))  # list/open products due now
        except BaseException:
            await self._shutdown("market failed to start")
            raise

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Finish what was submitted (committed and acknowledged), then stop. After a
        failure, or if draining takes longer than ``drain_timeout`` (database down), stop
        anyway: what was not committed is refused, never acknowledged."""
        if self.closed:
            if self._shutting_down is not None:  # a failure's shutdown under way: stopped once it ends
                await asyncio.shield(self._shutting_down)
            return
        was_running, self.running = self.running, False
        if was_running and self.failed is None:
            try:
                await asyncio.wait_for(self._drain(), drain_timeout)
            except TimeoutError:
                log.error("market %s: stopping with uncommitted commands (refused)", self.market_id)
        await self._shutdown("market stopped")

    async def _drain(self) -> None:
        while (self._queue or self._outbox or self._committing) and not self.closed:
            await asyncio.sleep(0.005)

    async def _shutdown(self, why: str) -> None:
        self.running = False
        self.closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self.committer.detach(self)
        # A transaction holding our rows may be under way: wait for it to end (committed, its
        # commands are answered), so that none of ours can land after the lock is released and
        # another instance of the market recovered without it.
        try:
            await asyncio.wait_for(self.committer.settled(self), SETTLE_TIMEOUT_S)
        except TimeoutError:
            log.critical("market %s: a journal transaction of it is still in flight after %.0f s; its callers are "
                         "refused, its lock stays held until that transaction ends", self.market_id,
                         SETTLE_TIMEOUT_S)
            self._refuse_all(why)
            if self._own_committer:  # its scheduler goes: the transaction is cancelled, the lock released
                await self.committer.stop()
            else:  # released once it ends, whenever that is (a restart of the market waits for it)
                self._unlocking = asyncio.get_running_loop().create_task(self._unlock_when_settled())
            return
        self._refuse_all(why)
        await self._unlock()
        if self._own_committer:
            await self.committer.stop()

    async def _unlock(self) -> None:
        try:
            await self.committer.unlock(self.market_id)
        except Exception:  # noqa: BLE001 - the connection may be gone; the lock goes with it
            log.warning("could not release the writer lock cleanly", exc_info=True)

    async def _unlock_when_settled(self) -> None:
        await self.committer.settled(self)
        await self._unlock()
        log.warning("market %s: its last journal transaction ended; lock released", self.market_id)

    def _refuse_all(self, why: str) -> None:
        self._queue.clear()
        self._outbox = []
        self._outbox_rows = 0
        self._waiters = []
        self._committing = 0
        self._space.set()  # a submitter waiting for room sees the market closed
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(MarketUnavailable(why))
        self._pending.clear()

    def fail(self, exc: BaseException) -> None:
        """An engine failure (or the scheduler stopped): stop the whole market (from a task of its own)."""
        if self.failed is None:
            log.critical("market %s stopped: %r", self.market_id, exc)
            self.failed = exc
        self.running = False
        if self._shutting_down is None and not self.closed:
            self._shutting_down = asyncio.get_running_loop().create_task(self._shutdown(f"market stopped: {exc!r}"))

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

    def _push(self, item: _Item) -> None:
        self._queue.append(item)
        self.committer.wake(self)

    async def submit(self, cmd: Command, origin: object = None) -> Result:
        """Queue a command and wait until its events are durable. The command's ``ts`` is
        stamped by the runtime when the engine takes it. ``origin`` reaches subscribers."""
        self._check_open()
        while len(self._queue) >= self.queue_size:  # back-pressure: wait for room
            self._space.clear()
            await self._space.wait()
            self._check_open()
        fut = self._new_future()
        self._push((cmd, fut, time.perf_counter_ns(), origin))
        return await fut

    def enqueue(self, cmd: Command, origin: object = None, *, future: bool = False) -> asyncio.Future | None:
        """Queue without waiting: raises :class:`MarketBusy` when the queue is full. The
        outcome reaches the subscribers (with ``origin``), and the future if asked for."""
        self._check_open()
        if len(self._queue) >= self.queue_size:
            raise MarketBusy(f"command queue full ({self.queue_size})")
        fut = self._new_future() if future else None
        self._push((cmd, fut, time.perf_counter_ns(), origin))
        return fut

    # ----------------------------------------------------------------- the scheduler's calls
    def step(self) -> bool:
        """Run the engine over the queued commands (at most ``max_batch``) into the outbox;
        True if more are queued. Pure and in memory: no I/O, no await."""
        q = self._queue
        engine = self.engine
        clock = self.clock
        outbox = self._outbox
        waiters = self._waiters
        journaled = False
        room = self.max_uncommitted - len(outbox) - self._committing  # woken again after the next COMMIT
        for _ in range(min(len(q), self.max_batch, room)):
            cmd, fut, t0, origin = q.popleft()
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
                outbox.append(Entry(0, cmd, events, None, origin))
                waiters.append((fut, t0))
                continue
            self.cmd_seq += 1
            self._journaled_ts = cmd.ts
            journaled = True
            self._outbox_rows += 1
            outbox.append(Entry(self.cmd_seq, cmd, events, command_json(cmd), origin))
            waiters.append((fut, t0))
        snap = self.snapshotter
        if journaled and snap is not None and snap.due(self.cmd_seq):  # between commands: a fork, ~ms
            snap.capture(engine, self.cmd_seq, self._journaled_ts, self._committed_cmd)
        if not self._space.is_set() and len(q) < self.queue_size:
            self._space.set()
        return bool(q) and len(outbox) + self._committing < self.max_uncommitted

    def outbox_rows(self) -> int:
        return self._outbox_rows

    def take(self) -> Group | None:
        """The outbox as one group: its journal and trade rows, and the entries to answer."""
        entries = self._outbox
        if not entries:
            return None
        waiters = self._waiters
        self._outbox = []
        self._outbox_rows = 0
        self._waiters = []
        jrows, trows = self.journal.rows(entries, self.engine)
        self._committing = len(entries)
        return Group(jrows, trows, (entries, waiters))

    def committed(self, group: Group, seconds: float) -> None:
        """The group is durable: answer its commands, then tell the subscribers, in order."""
        self._committing = 0
        if self._queue and not self.closed:  # the engine may have waited for this COMMIT (back-pressure)
            self.committer.wake(self)
        entries: list[Entry]
        waiters: list[tuple[asyncio.Future | None, int]]
        entries, waiters = group.payload  # type: ignore[misc]
        seq = entries[-1].events[-1].seq
        if seq > self.committed_seq:
            self.committed_seq = seq
        jrows = group.jrows
        if jrows:
            self.committed_cmd_seq = jrows[-1][1]  # the last journaled command of the group
        resolve = self._resolve
        for e, (fut, t0) in zip(entries, waiters, strict=True):
            if fut is not None:
                resolve(fut, Result(e.cmd_seq, e.events, t0))
        if self.subscribers:
            for sub in list(self.subscribers):
                try:
                    sub(entries)
                except Exception:  # a subscriber must never stop the market
                    log.exception("subscriber failed; removing it")
                    self.subscribers.remove(sub)
        if jrows and (self.stats is not None or self.on_commit is not None):
            self._record(seconds, len(jrows))

    def commit_failed(self, exc: Exception, retry_in: float) -> None:
        self.commit_failures += 1

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
