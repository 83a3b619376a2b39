"""Wiring: settings -> market config, clock, database pool, journal, runtime.

Used by ``voltbourse serve``, the demo, the benchmarks and the integration
tests, so they all run the same assembly.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import uvloop

from exchange.core.calendar import CalendarConfig, GateMode
from exchange.core.controls import PriceControls
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import Mechanism, SelfTradePrevention
from exchange.core.units import MONEY_UNITS_PER_EUR
from exchange.runtime.clock import Clock, RealClock, SimClock
from exchange.runtime.committer import GroupCommitter
from exchange.runtime.config import Settings
from exchange.runtime.db import create_pool
from exchange.runtime.inbox import InboxConsumer
from exchange.runtime.journal import Journal
from exchange.runtime.market import MarketRuntime
from exchange.runtime.snapshots import SnapshotStore, Snapshotter
from exchange.runtime.trades import TradeStore


def tune_gc() -> None:
    """The engine keeps hundreds of thousands of long-lived objects (orders, levels) and
    makes few reference cycles. Every collection stops the event loop for as long as it
    takes, which grows with the objects it looks at:

    - Python's default thresholds (700, 10, 10) make full collections of the whole heap,
      tens of milliseconds each (p99 ack 59 ms against 20 ms without them);
    - (50 000, 20, 1000), used before, never collected the old generation but stopped the
      loop 25-60 ms per young collection, and every twentieth one (the objects of a million
      allocations) for 0.8 s: measured in one process with ``bench journal``'s single-market
      load (docs/benchmarks.md, "Garbage collection pauses");
    - (5 000, 2, 100 000): young collections of a few thousand objects, the middle one every
      second time (about ten thousand objects), 5-10 ms each, about the same GC time in all;
      the old generation is still never collected (a full collection after 10^9 allocations).
    """

    gc.set_threshold(5_000, 2, 100_000)


def run_async(coro):
    """Run a coroutine on uvloop (the service's event loop; faster than the default),
    with the service's GC tuning."""


    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def market_config(s: Settings) -> MarketConfig:
    return MarketConfig(
        market_id=s.market_id,
        calendar=CalendarConfig(
            timezone=s.timezone,
            product_minutes=s.product_minutes,
            gate=GateMode(s.gate),
            gate_day_ahead_local_time=s.gate_day_ahead_local_time,
            gate_rolling_minutes=s.gate_rolling_minutes,
            open_days_before=s.open_days_before,
        ),
        price_min=s.price_min_ticks,
        price_max=s.price_max_ticks,
        min_quantity=s.min_quantity_wh,
        self_trade_prevention=SelfTradePrevention(s.self_trade_prevention),
        mechanism=Mechanism(s.mechanism),
        risk_checks=s.risk_checks,
        controls=PriceControls(
            price_band_bp=s.price_band_bp,
            price_band_min_ticks=s.price_band_min_ticks,
            max_order_value=s.max_order_value_eur * MONEY_UNITS_PER_EUR,
            volatility_bp=s.volatility_bp,
            volatility_min_ticks=s.volatility_min_ticks,
            volatility_auction_s=s.volatility_auction_s,
            otr_max=s.otr_max,
            otr_free=s.otr_free,
        ),
    )


def make_clock(s: Settings) -> Clock:
    if s.clock == "sim":

        return SimClock(s.sim_start or datetime.now(UTC), speed=s.sim_speed)
    return RealClock()


@dataclass
class Market:
    """A running market: the journal writer's pool (commits only), the readers' pool
    (committed reads: trades, positions, history), the journal, the runtime. With
    ``owns_pools`` False the pools are shared with the process's other markets (a platform
    hosting several communities) and stay open when this market closes."""

    pool: asyncpg.Pool
    journal: Journal
    runtime: MarketRuntime
    read_pool: asyncpg.Pool
    trades: TradeStore
    snapshotter: Snapshotter | None = None
    owns_pools: bool = True
    dsn: str | None = None  # for connections of its own (the engine inbox's LISTEN)
    inbox: InboxConsumer | None = None

    def start_inbox(self) -> InboxConsumer:
        """Apply the engine inbox's rows (commands posted by other processes: the settlement
        process) to this market; started by the subsystem that needs it, stopped with the market."""
        if self.inbox is None:
            self.inbox = InboxConsumer(self.runtime, self.pool, self.journal.market_id, self.dsn)
            self.inbox.start()
        return self.inbox

    @property
    def engine(self) -> MarketEngine:
        return self.runtime.engine

    async def close(self) -> None:
        if self.inbox is not None:
            await self.inbox.stop()
            self.inbox = None
        await self.runtime.stop()
        if self.snapshotter is not None:
            await self.snapshotter.close()
        if self.owns_pools:
            await self.read_pool.close()
            await self.pool.close()


async def open_market(dsn: str, settings: Settings, clock: Clock | None = None, *, config: MarketConfig | None = None,
                      keep_stats: bool = False, verify_replay: bool = True, pool: asyncpg.Pool | None = None,
                      read_pool: asyncpg.Pool | None = None, committer: GroupCommitter | None = None) -> Market:
    """Connect, recover the market from its journal and start its runtime.

    ``pool`` and ``read_pool`` (given together): pools shared with the process's other
    markets instead of two of its own; ``committer``: the process's group commit across
    markets (docs/architecture.md, "Group commit across markets"), which then also holds the
    market's single-writer lock."""
    if (pool is None) != (read_pool is None):
        raise ValueError("give both pool and read_pool (shared) or neither")
    owns = pool is None
    if pool is None:
        pool = await create_pool(dsn, min_size=1, max_size=settings.journal_pool_size)
    try:
        if read_pool is None:
            read_pool = await create_pool(dsn, min_size=1, max_size=settings.read_pool_size)
        journal = Journal(pool, settings.market_id)
        cfg = await journal.load_or_store_config(config or market_config(settings))
        # snapshots are read and written through the readers' pool, never the journal writer's
        store = SnapshotStore(read_pool, settings.market_id)
        snapshotter = (Snapshotter(store, every_commands=settings.snapshot_every_commands,
                                   interval_s=settings.snapshot_interval_s)
                       if settings.snapshot_every_commands else None)
        runtime = MarketRuntime(MarketEngine(cfg), journal, clock or make_clock(settings),
                                max_batch=settings.journal_max_batch, keep_stats=keep_stats,
                                snapshots=store if settings.snapshot_recovery else None, snapshotter=snapshotter,
                                committer=committer)
        await runtime.start(verify=verify_replay)
    except BaseException:
        if owns:
            if read_pool is not None:
                await read_pool.close()
            await pool.close()
        raise
    market = Market(pool, journal, runtime, read_pool, TradeStore(read_pool, settings.market_id), snapshotter,
                    owns_pools=owns, dsn=dsn)
    return market
