"""The markets' scheduler and group commit (exchange.runtime.committer): one task steps every
woken market and commits their outboxes together; up to ``in_flight`` transactions at once,
never two holding groups of the same market, a market's groups committed in the order its
engine produced them, a failed transaction retried without acknowledging anything, a
market that fails stopped alone. The journal write is replaced by a controllable fake and
the markets by fakes of the :class:`Scheduled` protocol (no database, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from exchange.runtime import committer as committer_module
from exchange.runtime.committer import Group, GroupCommitter

pytestmark = pytest.mark.unit


class FakeWrites:
    """Each transaction waits for its own release; records what ran at once."""

    def __init__(self) -> None:
        self.running: list[list[str]] = []  # the markets of each transaction in flight
        self.started: list[list[str]] = []
        self.order: list[tuple[str, int]] = []  # (market, row) as committed
        self.release: dict[int, asyncio.Event] = {}
        self.fail: set[int] = set()
        self.max_running = 0

    async def __call__(self, pool, groups) -> None:
        n = len(self.started)
        markets = [m for m, _, _ in groups]
        assert all(markets.count(m) == 1 for m in markets), "two groups of one market in a transaction"
        for other in self.running:
            assert not set(other) & set(markets), "two transactions of one market at once"
        self.started.append(markets)
        self.running.append(markets)
        self.max_running = max(self.max_running, len(self.running))
        ev = self.release.setdefault(n, asyncio.Event())
        try:
            await ev.wait()
            if n in self.fail:
                raise RuntimeError(f"transaction {n} failed")
            self.order.extend((m, r) for m, j, _ in groups for r in j)
        finally:
            self.running.remove(markets)

    def let(self, n: int) -> None:
        self.release.setdefault(n, asyncio.Event()).set()


class FakeMarket:
    """A market whose 'engine' turns each queued number into one journal row (0: a
    rejection, answered without a row), and whose callers wait for their row's commit."""

    def __init__(self, committer: GroupCommitter, market_id: str, explode_on: int | None = None) -> None:
        self.market_id = market_id
        self.closed = False
        self.committer = committer
        self.queue: list[tuple[int, asyncio.Future]] = []
        self.pending: list[asyncio.Future] = []  # every caller's, refused when the market stops
        self.outbox: list[tuple[int, asyncio.Future]] = []
        self.steps = 0
        self.failures: list[Exception] = []
        self.failed: BaseException | None = None
        self.explode_on = explode_on
        committer.attach(self)

    def submit(self, value: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        self.queue.append((value, fut))
        self.committer.wake(self)
        return fut

    def step(self) -> bool:
        self.steps += 1
        for value, _ in self.queue:
            if value == self.explode_on:
                raise ValueError("engine bug")
        self.outbox += self.queue
        self.queue = []
        return False

    def take(self) -> Group | None:
        if not self.outbox:
            return None
        batch, self.outbox = self.outbox, []
        return Group([v for v, _ in batch if v], [], batch)

    def committed(self, group: Group, seconds: float) -> None:
        for value, fut in group.payload:  # type: ignore[attr-defined]
            if not fut.done():
                fut.set_result(value)

    def commit_failed(self, exc: Exception, retry_in: float) -> None:
        self.failures.append(exc)

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.closed = True
        for fut in self.pending:
            if not fut.done():
                fut.set_exception(RuntimeError("market stopped"))


@pytest.fixture
def writes(monkeypatch) -> FakeWrites:
    fake = FakeWrites()
    monkeypatch.setattr(committer_module, "write_groups", fake)
    return fake


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_second_transaction_starts_while_the_first_commits(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    fa = a.submit(1)
    await settle()
    assert writes.started == [["a"]]
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"], ["b"]] and writes.max_running == 2 and c.overlapped == 1
    writes.let(1)
    assert await fb == 1
    assert not fa.done()  # a's COMMIT has not come back: not acknowledged
    writes.let(0)
    assert await fa == 1
    assert (c.commits, c.groups) == (2, 2)
    await c.stop()


async def test_one_transaction_per_market_its_groups_in_order_and_merged_while_waiting(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    first = a.submit(1)
    await settle()
    later = [a.submit(2), a.submit(0), a.submit(3)]  # processed while a's first group commits
    other = b.submit(1)
    await settle()
    assert writes.started == [["a"], ["b"]]  # a's next group waits for a's transaction
    assert a.steps == 2 and not any(f.done() for f in later)  # stepped, not answered: the rejection too
    writes.let(0)
    await first
    await settle()
    assert writes.started == [["a"], ["b"], ["a"]]  # the three processed since, in one group
    writes.let(2)
    assert await asyncio.gather(*later) == [2, 0, 3]
    writes.let(1)
    await other
    assert [r for m, r in writes.order if m == "a"] == [1, 2, 3]
    await c.stop()


async def test_a_group_without_rows_is_answered_at_once_when_nothing_of_its_market_is_in_flight(writes):
    c = GroupCommitter(None, in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    assert await a.submit(0) == 0
    assert writes.started == [] and c.commits == 0
    await c.stop()


async def test_at_most_in_flight_transactions_and_a_failed_one_is_retried_alone(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    m = {k: FakeMarket(c, k) for k in "abcd"}
    writes.fail.add(0)
    futs = {"a": m["a"].submit(1)}
    await settle()
    futs |= {k: m[k].submit(1) for k in "bc"}
    await settle()
    futs["d"] = m["d"].submit(1)
    await settle()
    # a alone in the first transaction, b and c together in the second; d waits for a slot
    assert writes.started == [["a"], ["b", "c"]] and writes.max_running == 2
    writes.let(0)  # fails: retried after a back-off, a acknowledged only after it succeeds
    await asyncio.sleep(0.01)
    assert not futs["a"].done() and len(m["a"].failures) == 1 and not m["b"].failures
    writes.let(1)
    await futs["b"]
    await futs["c"]
    await settle()
    assert writes.started[2] == ["d"]  # the slot b and c freed; a's retry still holds the other
    writes.let(2)
    await futs["d"]
    await asyncio.sleep(0.1)
    assert writes.started[3] == ["a"]
    writes.let(3)
    assert await futs["a"] == 1
    assert (c.commits, c.groups) == (3, 4)
    await c.stop()


async def test_one_in_flight_never_overlaps(writes):
    c = GroupCommitter(None, in_flight=1)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    fa = a.submit(1)
    await settle()
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"]]
    writes.let(0)
    writes.let(1)
    await asyncio.gather(fa, fb)
    assert writes.started == [["a"], ["b"]] and writes.max_running == 1 and c.overlapped == 0
    await c.stop()


async def test_max_rows_closes_a_transaction(writes):
    c = GroupCommitter(None, max_rows=3, in_flight=1)  # type: ignore[arg-type]
    c.start()
    z = FakeMarket(c, "z")
    busy = z.submit(1)
    await settle()
    markets = [FakeMarket(c, k) for k in "abc"]
    futs = [f for mk in markets for f in (mk.submit(1), mk.submit(2))]
    await settle()
    writes.let(0)
    await busy
    await settle()
    assert writes.started[1] == ["a", "b"]  # 4 rows: the group that reached max_rows closes it
    writes.let(1)
    writes.let(2)
    await asyncio.gather(*futs)
    assert writes.started[2] == ["c"]
    await c.stop()


async def test_a_failing_market_stops_alone(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    bad, good = FakeMarket(c, "bad", explode_on=7), FakeMarket(c, "good")
    lost = bad.submit(7)
    fine = good.submit(1)
    await settle()
    assert isinstance(bad.failed, ValueError)
    with pytest.raises(RuntimeError, match="market stopped"):
        await lost
    writes.let(0)
    assert await fine == 1
    bad.submit(1)  # a detached market is not stepped any more
    await settle()
    assert bad.steps == 1 and writes.started == [["good"]]
    await c.stop()


async def test_stop_stops_the_markets_still_attached(writes):
    c = GroupCommitter(None, in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    waiting = a.submit(1)
    await settle()
    await c.stop()
    assert a.failed is not None and a.closed
    with pytest.raises((RuntimeError, asyncio.CancelledError)):
        await waiting
    with pytest.raises(RuntimeError, match="not running"):
        FakeMarket(c, "b")
