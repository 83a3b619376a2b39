"""``voltbourse bench settlement``: a seeded stream of trades anchored on a chain.

The chain is the in-process EVM (in memory, by default) or a JSON-RPC node (``rpc``: a
URL, or ``"hardhat"`` to start the local Hardhat dev node of settlement/devnode.py for
the run); fresh contracts are deployed on it either way. Against a fresh embedded
PostgreSQL, with the real runtime, journal, worker and contracts (compiled from source),
three phases:

1. **backlog**: ``trades`` trades are committed first, then the worker settles them
   all (ingest, form, sign, send, record, collateral): ``trades_per_s`` and
   ``gas_per_trade`` at ``batch_size``.
2. **stream**: trades keep arriving at ``rate`` trades/s for ``stream_s`` seconds
   while the worker runs as in production (batches by size or ``max_age_s``):
   ``lag_p50_s`` / ``lag_p99_s`` from each trade's commit (its ack) to the moment
   its batch is recorded as anchored.
3. **realistic flow**: trades arrive as in ``voltbourse bots run`` (about
   ``flow_rate`` = 2.2 trades/s, i.e. about 11 trades per batch at the default
   ``max_age_s`` of 5 s), batched by the worker's time rule: ``gas_per_trade_realistic``,
   the mean batch it produced and the lag; then the same flow again under the thin-flow
   policy (``min_batch`` trades, at most ``thin_max_age_s``): ``…_thin`` figures. The
   flow runs ``flow_speed`` times faster than real time, with the ages scaled alike
   (gas depends on trades and members per batch, not on the clock): ``flow_speed`` 2
   for the time rule, whose ages are short enough for the worker's own time per batch
   (a round trip or a block) to count, 10 for the thin-flow policy over
   ``THIN_FLOW_AGES`` × ``thin_max_age_s``. Lags are reported in real-flow seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import ExitStack
from typing import Any

from eth_account import Account

from exchange.core.ids import MemberId, ProductId
from exchange.core.model import PlaceOrder, RegisterMember, Side, TradeEvent
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.scratch import BENCH_T0, run_on_database
from exchange.runtime.service import open_market
from settlement.chain import Chain
from settlement.devnode import DEV_OPERATOR_KEY, DevNode
from settlement.reconcile import reconcile
from settlement.worker import BATCH_OF_TRADE, SettlementWorker, unsettled

MEMBERS = 24
DEPOSIT = 10**16
GAS_MONEY = 10**18  # wei each member gets for its own deposit transactions on an RPC node
#: the realistic flow (issue 12, item 10): `bots run` anchors about 11 trades per batch at
#: the default settlement_max_age_s of 5 s
FLOW_RATE = 2.2
#: the thin-flow policy measured against it
MIN_BATCH = 100
THIN_MAX_AGE_S = 60.0
#: the thin-flow run lasts this many thin_max_age_s, at this speed (its batches are ~10 times
#: longer than the time rule's, so the worker's own time per batch weighs alike)
THIN_FLOW_AGES = 7.5
THIN_SPEED = 10.0


def _pct(vals: list[float], q: float) -> float:
    return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else 0.0


def _send_gas_money(chain: Chain, addresses: list[str], wei: int) -> None:
    """The operator pays members' gas on a node (plain value transfers, signed locally)."""
    nonce = chain.pending_nonce()
    hashes = []
    for i, to in enumerate(addresses):
        tx: dict[str, Any] = {"to": to, "value": wei, "gas": 21_000, "gasPrice": chain.w3.eth.gas_price, "nonce": nonce + i,
              "chainId": chain.chain_id}
        hashes.append(chain.send_raw(bytes(chain.operator.sign_transaction(tx).raw_transaction)))
    for h in hashes:
        receipt = chain.receipt(h)
        if receipt is None or receipt["status"] != 1:
            raise RuntimeError(f"gas money transfer {h} failed")
    chain.reset_nonce()  # the next anchor reads the operator's nonce from the node


async def _bench(dsn: str, chain: Chain, kind: str, trades: int, seed: int, batch_size: int, rate: int,
                 stream_s: float, max_age_s: float, flow_rate: float, flow_s: float, flow_speed: float,
                 min_batch: int, thin_max_age_s: float) -> dict:
    # Pairs trade at random prices on purpose (settlement is measured, not price formation):
    # without the price controls, whose band and volatility auctions would stop such trading
    # (a volatility auction never ends on the bench's manual clock)
    settings = load_settings(database_url=dsn, market_id="bench", price_band_bp=0, price_band_min_ticks=0,
                             volatility_bp=0, volatility_min_ticks=0, max_order_value_eur=0)
    market = await open_market(dsn, settings, ManualClock(BENCH_T0))
    rt = market.runtime
    worker = SettlementWorker(market.pool, "bench", chain, runtime=rt, batch_size=batch_size, max_age_s=max_age_s,
                              poll_s=0.05)
    rng = random.Random(seed)
    try:
        await worker.start()
        accounts = [Account.from_key(rng.randbytes(32)) for _ in range(MEMBERS)]
        if not chain.is_in_process:
            await worker._chain(_send_gas_money, chain, [a.address for a in accounts], GAS_MONEY)
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

        async def settled() -> None:
            while await unsettled(market.pool, "bench"):
                await asyncio.sleep(0.1)

        async def lags(scale: float = 1.0) -> list[float]:
            rows = await market.pool.fetch(
                "SELECT t.trade_id, extract(epoch FROM b.anchored_at)::float8 AS at FROM trades t "
                + BATCH_OF_TRADE + " WHERE t.market_id = $1 AND t.trade_id = ANY($2) AND b.batch_id IS NOT NULL",
                "bench", list(acked))
            return sorted((r["at"] - acked[r["trade_id"]]) * scale for r in rows)

        async def members_per_batch(first_batch: int) -> float:
            n = await market.pool.fetchval(
                "SELECT avg(jsonb_array_length(nets)) FROM settlement_batches "
                "WHERE market_id = 'bench' AND batch_id > $1", first_batch)
            return round(float(n or 0), 1)

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
        await settled()
        stream_lags = await lags()

        # ---- phase 3: the realistic flow, by the time rule, then under the thin-flow policy
        async def flow(min_b: int, thin_s: float, flow_s: float, flow_speed: float) -> dict:
            acked.clear()
            worker.max_age_s = max_age_s / flow_speed
            worker.min_batch = min_b
            worker.thin_max_age_s = max(thin_s, max_age_s) / flow_speed
            first_batch = await market.pool.fetchval(
                "SELECT coalesce(max(batch_id), 0) FROM settlement_batches WHERE market_id = 'bench'")
            g0, b0 = worker.stats["gas_used"], worker.stats["batches_anchored"]
            t_start = time.perf_counter()
            t_end = t_start + flow_s / flow_speed
            while time.perf_counter() < t_end:
                while len(acked) < int((time.perf_counter() - t_start) * flow_rate * flow_speed):
                    await pair()
                    worker.wake()  # as the runtime does in production on every commit
                await asyncio.sleep(0.005)
            n = len(acked)
            await settled()
            nb = worker.stats["batches_anchored"] - b0
            flow_lags = await lags(flow_speed)
            return {"trades": n, "batches": nb, "gas_per_trade": round((worker.stats["gas_used"] - g0) / n, 1),
                    "batch_size": round(n / nb, 1) if nb else 0.0, "members_per_batch": await members_per_batch(
                        first_batch), "lag_p50_s": round(_pct(flow_lags, 0.5), 1),
                    "lag_p99_s": round(_pct(flow_lags, 0.99), 1)}

        realistic = await flow(0, max_age_s, flow_s, flow_speed)
        thin = await flow(min_batch, thin_max_age_s, max(flow_s, THIN_FLOW_AGES * thin_max_age_s), THIN_SPEED)
        worker.stop()
        await run

        rep = await reconcile(market.pool, "bench", chain)
        return {
            "chain": kind,
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
            "lag_p50_s": round(_pct(stream_lags, 0.5), 3),
            "lag_p99_s": round(_pct(stream_lags, 0.99), 3),
            "flow_rate": flow_rate,
            "flow_trades": realistic["trades"],
            "gas_per_trade_realistic": realistic["gas_per_trade"],
            "batch_size_realistic": realistic["batch_size"],
            "members_per_batch_realistic": realistic["members_per_batch"],
            "lag_p50_s_realistic": realistic["lag_p50_s"],
            "lag_p99_s_realistic": realistic["lag_p99_s"],
            "min_batch": min_batch,
            "thin_max_age_s": thin_max_age_s,
            "gas_per_trade_thin": thin["gas_per_trade"],
            "batch_size_thin": thin["batch_size"],
            "members_per_batch_thin": thin["members_per_batch"],
            "lag_p50_s_thin": thin["lag_p50_s"],
            "lag_p99_s_thin": thin["lag_p99_s"],
            "reconcile_ok": rep.ok,
        }
    finally:
        worker.stop()
        worker.close()
        await market.close()


def bench_settlement(trades: int = 20_000, seed: int = 1, batch_size: int = 10_000, rate: int = 1000,
                     stream_s: float = 10.0, max_age_s: float = 5.0, dsn: str | None = None, *,
                     rpc: str | None = None, operator_key: str | None = None, flow_rate: float = FLOW_RATE,
                     flow_s: float = 100.0, flow_speed: float = 2.0, min_batch: int = MIN_BATCH,
                     thin_max_age_s: float = THIN_MAX_AGE_S) -> dict:
    """``rpc``: None for the in-process EVM (in memory), a JSON-RPC URL, or ``"hardhat"``
    to start the local Hardhat dev node for the run. On a node the operator signs with
    ``operator_key``, by default the dev node's first account (Hardhat's and anvil's)."""
    with ExitStack() as stack:
        if rpc is None:
            chain, kind = Chain.in_process(), "in-process"
        else:
            if rpc == "hardhat":
                rpc = stack.enter_context(DevNode()).url
            chain, kind = Chain.rpc(rpc, operator_key or DEV_OPERATOR_KEY), "rpc"
        stack.callback(chain.close)
        return run_on_database(
            lambda d: _bench(d, chain, kind, trades, seed, batch_size, rate, stream_s, max_age_s, flow_rate,
                             flow_s, flow_speed, min_batch, thin_max_age_s), dsn, prefix="bench-settlement-")
