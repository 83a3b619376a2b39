"""``voltbourse bench settlement``: a seeded stream of trades anchored on the in-process EVM.

Two phases against a fresh embedded PostgreSQL and a fresh in-process chain, with
the real runtime, journal, worker and contracts (compiled from source):

1. **backlog**: ``trades`` trades are committed first, then the worker settles them
   all (ingest, form, sign, send, record, collateral): ``trades_per_s`` and
   ``gas_per_trade`` at ``batch_size``.
2. **stream**: trades keep arriving at ``rate`` trades/s for ``stream_s`` seconds
   while the worker runs as in production (batches by size or ``max_age_s``):
   ``lag_p50_s`` / ``lag_p99_s`` from each trade's commit (its ack) to the moment
   its batch is recorded as anchored.
"""

from __future__ import annotations

import asyncio
import random
import time

from eth_account import Account

from exchange.core.ids import MemberId, ProductId
from exchange.core.model import PlaceOrder, RegisterMember, Side, TradeEvent
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.scratch import BENCH_T0, run_on_database
from exchange.runtime.service import open_market
from settlement.chain import Chain
from settlement.reconcile import reconcile
from settlement.worker import SettlementWorker

MEMBERS = 24
DEPOSIT = 10**16


def _pct(vals: list[float], q: float) -> float:
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else 0.0


async def _bench(dsn: str, trades: int, seed: int, batch_size: int, rate: int, stream_s: float,
                 max_age_s: float) -> dict:


    # Pairs trade at random prices on purpose (settlement is measured, not price formation):
    # without the price controls, whose band and volatility auctions would stop such trading
    # (a volatility auction never ends on the bench's manual clock)
    settings = load_settings(database_url=dsn, market_id="bench", price_band_bp=0, price_band_min_ticks=0,
                             volatility_bp=0, volatility_min_ticks=0, max_order_value_eur=0)
    market = await open_market(dsn, settings, ManualClock(BENCH_T0))
    rt = market.runtime
    chain = Chain.in_process()
    worker = SettlementWorker(market.pool, "bench", chain, runtime=rt, batch_size=batch_size, max_age_s=max_age_s,
                              poll_s=0.05)
    rng = random.Random(seed)
    try:
        await worker.start()
        accounts = [Account.from_key(rng.randbytes(32)) for _ in range(MEMBERS)]
        for a in accounts:
            await rt.submit(RegisterMember(0, MemberId(a.address), collateral=None, export_capacity_w=10**12))
            await worker._chain(chain.fund_member, a, DEPOSIT)
        await worker.scan_chain()
        pids = sorted(ProductId(p) for p, pb in rt.engine.products.items() if pb.state.value == "open")
        acked: dict[int, float] = {}

        async def pair() -> None:
            seller, buyer = rng.sample(accounts, 2)
            pid = rng.choice(pids)
            price, qty = rng.randint(-2_000, 30_000), rng.randint(100, 10_000)
            for acct, side in ((seller, Side.SELL), (buyer, Side.BUY)):
                res = await rt.submit(PlaceOrder(0, MemberId(acct.address), pid, side, price, qty))
                now = time.time()
                for ev in res.events:
                    if isinstance(ev, TradeEvent):
                        acked[ev.trade_id] = now

        # ---- phase 1: backlog
        async def producer(n: int) -> None:
            for _ in range(n):
                await pair()

        conc = 32
        await asyncio.gather(*(producer(trades // conc) for _ in range(conc)))
        backlog = len(acked)
        gas0, t0 = worker.stats["gas_used"], time.perf_counter()
        await worker.drain()
        elapsed = time.perf_counter() - t0
        gas = worker.stats["gas_used"] - gas0
        batches = worker.stats["batches_anchored"]

        # ---- phase 2: a live stream at `rate` trades/s, worker running
        acked.clear()
        run = asyncio.create_task(worker.run())
        t_end = time.perf_counter() + stream_s
        sent = 0
        t_start = time.perf_counter()
        while time.perf_counter() < t_end:
            due = int((time.perf_counter() - t_start) * rate) - sent
            if due > 0:
                await asyncio.gather(*(pair() for _ in range(due)))
                sent += due
            await asyncio.sleep(0.01)
        stream_trades = len(acked)
        while await market.pool.fetchval("SELECT count(*) FROM trades WHERE market_id='bench' AND batch_id IS NULL") \
                or await market.pool.fetchval("SELECT count(*) FROM settlement_batches WHERE state <> 'anchored'"):
            await asyncio.sleep(0.1)
        worker.stop()
        await run
        rows = await market.pool.fetch(
            "SELECT t.trade_id, extract(epoch FROM b.anchored_at)::float8 AS at FROM trades t "
            "JOIN settlement_batches b USING (market_id, batch_id) WHERE t.market_id = 'bench' AND t.trade_id = ANY($1)",
            list(acked))
        lags = sorted(r["at"] - acked[r["trade_id"]] for r in rows)

        rep = await reconcile(market.pool, "bench", chain)
        return {
            "trades": backlog,
            "batch_size": batch_size,
            "batches": batches,
            "seconds": round(elapsed, 3),
            "trades_per_s": round(backlog / elapsed),
            "gas_per_trade": round(gas / backlog, 1),
            "members": MEMBERS,
            "stream_rate": rate,
            "stream_trades": stream_trades,
            "max_age_s": max_age_s,
            "lag_p50_s": round(_pct(lags, 0.5), 3),
            "lag_p99_s": round(_pct(lags, 0.99), 3),
            "reconcile_ok": rep.ok,
        }
    finally:
        worker.stop()
        worker.close()
        await market.close()


def bench_settlement(trades: int = 20_000, seed: int = 1, batch_size: int = 2000, rate: int = 1000,
                     stream_s: float = 10.0, max_age_s: float = 5.0, dsn: str | None = None) -> dict:

    return run_on_database(lambda d: _bench(d, trades, seed, batch_size, rate, stream_s, max_age_s), dsn,
                           prefix="bench-settlement-")
