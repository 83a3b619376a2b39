"""The settlement worker against a real PostgreSQL, the real runtime and the real
in-process EVM with contracts compiled from source: trades anchored exactly once,
crashes at every step, a chain that refuses transactions, reconciliation, proofs,
collateral and withdrawals."""

from __future__ import annotations

import pytest
from support.market import open_products, open_test_market
from support.settlement import (
    DEPOSIT,
    MEMBER_KEYS,
    funded_worker,
    make_worker,
    reconnect,
    register_and_fund,
    trade,
)

from exchange.core.model import OrderAccepted, PlaceOrder, Rejected, Side
from exchange.flexibility.store import FlexStore
from settlement.chain import ChainError
from settlement.proofs import ProofError, ProofService, verify_proof
from settlement.reconcile import reconcile
from settlement.worker import FAULT_POINTS

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """Raised by the fault hook: the worker 'dies' at that point."""


async def _assert_settled(pool, market, chain, n_trades):
    rep = await reconcile(pool, "s", chain)
    assert rep.ok, rep.differences
    assert rep.trades == n_trades and rep.pending_trades == 0
    assert chain.registry.functions.batchCount().call() == rep.batches == rep.anchored
    # each member's engine collateral is its chain collateral; nothing unsettled remains
    for acct in MEMBER_KEYS:
        a = market.engine.accounts[acct.address]
        assert a.collateral == chain.collateral(acct.address)
        assert a.net_payable == 0
    assert sum(chain.collateral(a.address) for a in MEMBER_KEYS) == DEPOSIT * len(MEMBER_KEYS)


async def test_trades_anchor_once_reconcile_and_prove(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain)
        assert market.engine.accounts[MEMBER_KEYS[0].address].collateral == DEPOSIT
        n = await trade(market, 40)
        assert n >= 20
        await worker.drain()
        await _assert_settled(pool, market, chain, n)
        batches = await pool.fetch("SELECT * FROM settlement_batches ORDER BY batch_id")
        assert [b["trade_count"] for b in batches[:-1]] == [7] * (len(batches) - 1)
        assert all(b["state"] == "anchored" and b["block_number"] and b["gas_used"] for b in batches)
        # a signed order's signature is part of its leaf
        signed = await pool.fetchval("SELECT count(*) FROM order_signatures")
        assert signed > 0
        # proofs: every trade verifies against the chain; a member cannot fetch another's trade
        proofs = ProofService(pool, "s", chain)
        rows = await pool.fetch("SELECT trade_id, buyer, seller FROM trades ORDER BY trade_id")
        for r in rows:
            p = await proofs.trade_proof(r["trade_id"], member=r["buyer"])
            assert verify_proof(p, chain.registry)
        outsider = next(a.address for a in MEMBER_KEYS if a.address not in {rows[0]["buyer"], rows[0]["seller"]})
        with pytest.raises(ProofError) as exc:
            await proofs.trade_proof(rows[0]["trade_id"], member=outsider)
        assert exc.value.code == "NOT_FOUND"
        # a tampered proof or trade field fails, on and off chain
        p = await proofs.trade_proof(rows[0]["trade_id"])
        bad = dict(p, trade=dict(p["trade"], energy_wh=p["trade"]["energy_wh"] + 1))
        assert not verify_proof(bad, chain.registry) and not verify_proof(bad)
        if p["proof"]:
            flipped = dict(p, proof=[p["proof"][0][:-1] + ("0" if p["proof"][0][-1] != "0" else "1")] + p["proof"][1:])
            assert not verify_proof(flipped, chain.registry)
    finally:
        worker.close()
        await market.close()


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_crash_at_each_step_neither_loses_nor_double_anchors(pool, pg_dsn, chain, point):
    market = await open_test_market(pg_dsn, "s")
    workers = []
    try:
        hits = []

        def fault(p):
            if p == point and not hits:
                hits.append(p)
                raise Crash(p)

        w1 = make_worker(pool, market, chain, fault=fault)
        workers.append(w1)
        await w1.start()
        await register_and_fund(market, w1, chain)
        n = await trade(market, 25, seed=7)
        with pytest.raises(Crash):
            await w1.drain()
        assert hits == [point]
        # a new worker process: fresh chain connection (nonce re-read), same database
        w2 = make_worker(pool, market, reconnect(chain))
        workers.append(w2)
        await w2.start()
        assert w2.deployment_id == w1.deployment_id  # contracts remembered, not redeployed
        await w2.drain()
        await _assert_settled(pool, market, w2.chain, n)
    finally:
        for w in workers:
            w.close()
        await market.close()


async def test_chain_refusing_transactions_retries_with_alert_and_loses_nothing(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain, retry_s=0.05, retry_max_s=0.2, poll_s=0.05)
        # the operator's account runs out of gas money: the chain refuses every transaction
        w3 = chain.w3
        op = chain.operator.address
        sink = w3.eth.accounts[1]
        balance = w3.eth.get_balance(op)
        tx = {"to": sink, "value": balance - 21_000 * w3.eth.gas_price, "gas": 21_000,
              "gasPrice": w3.eth.gas_price, "nonce": w3.eth.get_transaction_count(op), "chainId": chain.chain_id}
        w3.eth.send_raw_transaction(chain.operator.sign_transaction(tx).raw_transaction)
        chain._nonce = None
        n = await trade(market, 20, seed=3)
        with pytest.raises(ChainError):
            await worker.step(force=True)
        import asyncio

        task = asyncio.create_task(worker.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if worker.failures >= 3 or task.done():
                break
        if task.done():
            task.result()
        assert worker.failures >= 3 and worker.alert and "retrying" in worker.alert
        status = await worker.status()
        assert status["alert"] and status["pending_trades"] + sum(
            b["trade_count"] for b in status["batches"] if b["state"] != "anchored") == n
        assert chain.registry.functions.batchCount().call() == 0
        # gas money again: the worker catches up by itself and clears the alert
        chain.faucet(op, 10**20)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if worker.alert is None and (await worker.status())["pending_trades"] == 0 and \
                    not await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE state <> 'anchored'"):
                break
        worker.stop()
        await task
        await worker.drain()
        await _assert_settled(pool, market, chain, n)
    finally:
        worker.close()
        await market.close()


async def test_reconcile_while_the_exchange_settles_reports_no_difference(pool, pg_dsn, chain):
    """Batches formed and anchored while a reconciliation runs (it read the database's
    batches first, the registry's count last) are in flight, not a difference: an operator
    running `voltbourse settlement reconcile` during trading saw exit 1 about a third of the time."""
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain)
        await trade(market, 20, seed=3)
        await worker.drain()
        before = await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE market_id = 's'")
        await trade(market, 20, seed=4)  # pending: settled while the check runs
        settled_meanwhile = []

        async def run(fn, *args):
            if fn == chain.history_start and not settled_meanwhile:  # after the batches were read
                await worker.drain()
                settled_meanwhile.append(
                    await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE market_id = 's'") - before)
            return fn(*args)

        rep = await reconcile(pool, "s", chain, run=run)
        assert settled_meanwhile[0] > 0
        assert rep.ok, rep.differences
        assert sum("formed during the check" in f for f in rep.in_flight) == settled_meanwhile[0], rep.in_flight
        assert (await reconcile(pool, "s", chain)).ok  # and afterwards, plainly anchored
    finally:
        worker.close()
        await market.close()


async def test_reconcile_detects_corrupted_records(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain)
        n = await trade(market, 30, seed=5)
        await worker.drain()
        assert (await reconcile(pool, "s", chain)).ok
        # a trade's price altered after anchoring: the batch no longer hashes to its root
        await pool.execute("UPDATE trades SET price_ticks = price_ticks + 1 WHERE trade_id = 2")
        rep = await reconcile(pool, "s", chain)
        assert not rep.ok and any("batch 1" in d and "root" in d for d in rep.differences)
        await pool.execute("UPDATE trades SET price_ticks = price_ticks - 1 WHERE trade_id = 2")
        # a trade gone from its batch
        gone = await pool.fetchrow("SELECT * FROM trades WHERE market_id = 's' AND trade_id = 3")
        await pool.execute("DELETE FROM trades WHERE market_id = 's' AND trade_id = 3")
        rep = await reconcile(pool, "s", chain)
        assert not rep.ok and any("batch 1" in d and "the database has" in d for d in rep.differences)
        assert any("counted twice or missing" in d for d in rep.differences)
        await pool.execute(f"INSERT INTO trades ({', '.join(gone.keys())}) VALUES "
                           f"({', '.join(f'${i}' for i in range(1, len(gone) + 1))})", *gone.values())
        # a batch's recorded range that leaves its last trade in no batch
        b1 = await pool.fetchrow("SELECT * FROM settlement_batches WHERE market_id = 's' AND batch_id = 1")
        await pool.execute("UPDATE settlement_batches SET last_trade_id = last_trade_id - 1, "
                           "trade_count = trade_count - 1 WHERE market_id = 's' AND batch_id = 1")
        rep = await reconcile(pool, "s", chain)
        assert not rep.ok and any("in no batch" in d for d in rep.differences)
        # ranges that overlap
        await pool.execute("UPDATE settlement_batches SET last_trade_id = $1 + 1, trade_count = $2 + 1 "
                           "WHERE market_id = 's' AND batch_id = 1", b1["last_trade_id"], b1["trade_count"])
        rep = await reconcile(pool, "s", chain)
        assert not rep.ok and any("batch 2" in d and "overlap batch 1" in d for d in rep.differences)
        await pool.execute("UPDATE settlement_batches SET last_trade_id = $1, trade_count = $2 "
                           "WHERE market_id = 's' AND batch_id = 1", b1["last_trade_id"], b1["trade_count"])
        assert (await reconcile(pool, "s", chain)).ok
        # a recorded root that is not the one on chain
        await pool.execute("UPDATE settlement_batches SET root = '0x' || repeat('ab', 32) WHERE batch_id = 2")
        rep = await reconcile(pool, "s", chain)
        assert any("batch 2" in d and "on chain" in d for d in rep.differences)
        assert rep.trades == n
    finally:
        worker.close()
        await market.close()


async def test_withdrawal_refused_while_backing_orders_then_executed(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain)
        alice = MEMBER_KEYS[0]
        pid = open_products(market.engine)[0]
        # an open buy order of 80 % of the deposit backs that much collateral
        qty, price = 200_000_000, 400_000  # Wh x ticks = 8e13 money units
        res = await market.runtime.submit(PlaceOrder(0, alice.address, pid, Side.BUY, price, qty))
        assert isinstance(res.events[0], OrderAccepted)
        reg = chain.registry
        await worker._chain(chain.member_transact, alice, reg.functions.requestWithdrawal(DEPOSIT // 2))
        await worker.step()
        row = await pool.fetchrow("SELECT state, reason FROM settlement_withdrawals WHERE request_id = 1")
        assert row["state"] == "rejected" and "open buy orders" in row["reason"]
        assert reg.functions.withdrawals(1).call()[2] == 3
        assert chain.collateral(alice.address) == DEPOSIT
        # a withdrawal of what is free goes through: tokens back to the member
        await worker._chain(chain.member_transact, alice, reg.functions.requestWithdrawal(DEPOSIT // 10))
        await worker.step()
        row = await pool.fetchrow("SELECT state FROM settlement_withdrawals WHERE request_id = 2")
        assert row["state"] == "executed"
        assert chain.collateral(alice.address) == DEPOSIT - DEPOSIT // 10
        assert chain.token.functions.balanceOf(alice.address).call() == DEPOSIT // 10
        assert market.engine.accounts[alice.address].collateral == DEPOSIT - DEPOSIT // 10
        # and the engine now refuses a buy the remaining collateral cannot back
        res = await market.runtime.submit(PlaceOrder(0, alice.address, pid, Side.BUY, price, 50_000_000))
        assert isinstance(res.events[0], Rejected)
    finally:
        worker.close()
        await market.close()


async def test_flexibility_payouts_settle_on_chain_once(pool, pg_dsn, chain):
    """Payouts of a payout source (the flexibility gateway's store, through the port
    exchange.runtime.ports.PayoutSource): revenue shares credited, a penalty debited, all
    in one transaction per event, recorded with the event as their payout batch."""
    market = await open_test_market(pg_dsn, "s")
    sources = [FlexStore(pool, market.journal.market_id)]
    try:
        worker = await funded_worker(pool, market, chain, payout_sources=sources)
        a, b, c = (k.address for k in MEMBER_KEYS[:3])
        rows = [(1, 7, a, 1_500_000_000), (2, 7, b, 700_000_000), (3, 7, c, -200_000_000)]
        await pool.executemany("INSERT INTO flex_payouts (market_id, payout_id, event_id, member, amount_units) "
                               "VALUES ('s', $1, $2, $3, $4)", rows)
        await worker.step()
        assert chain.registry.functions.payoutBatches(7).call()
        assert chain.collateral(a) == DEPOSIT + 1_500_000_000
        assert chain.collateral(c) == DEPOSIT - 200_000_000
        assert market.engine.accounts[a].collateral == DEPOSIT + 1_500_000_000
        assert await pool.fetchval("SELECT count(*) FROM flex_payouts WHERE status = 'settled' AND batch_id = 7") == 3
        # a crash after the chain took it but before the rows were marked: settled once, not twice
        await pool.execute("UPDATE flex_payouts SET status = 'pending'")
        w2 = make_worker(pool, market, reconnect(chain), payout_sources=sources)
        await w2.start()
        await w2.step()
        assert chain.collateral(a) == DEPOSIT + 1_500_000_000
        assert await pool.fetchval("SELECT count(*) FROM flex_payouts WHERE status = 'settled'") == 3
        # a penalty above what the member holds on chain takes what is there and does not
        # block the others' shares
        poor = "0x000000000000000000000000000000000000dEaD"
        await pool.executemany("INSERT INTO flex_payouts (market_id, payout_id, event_id, member, amount_units) "
                               "VALUES ('s', $1, $2, $3, $4)", [(4, 8, a, 100), (5, 8, poor, -5_000)])
        await w2.step()
        assert chain.registry.functions.payoutBatches(8).call()
        assert chain.collateral(a) == DEPOSIT + 1_500_000_100 and chain.collateral(poor) == 0
        w2.close()
    finally:
        worker.close()
        await market.close()


async def test_fresh_in_process_chain_redeploys_without_settling_history_twice(pool, pg_dsn, chain, artifacts):
    """The in-process EVM starts empty: the worker deploys anew; batches anchored on the
    old chain stay with the retired deployment (reported as unverifiable, never re-netted),
    the engine stops trusting collateral that lived on the old chain, and new trades
    settle on the new chain."""
    from settlement.chain import Chain

    market = await open_test_market(pg_dsn, "s")
    try:
        w1 = await funded_worker(pool, market, chain)
        n1 = await trade(market, 20, seed=11)
        await w1.drain()
        w1.close()
        old_batches = await pool.fetchval("SELECT count(*) FROM settlement_batches")
        fresh = Chain.in_process(artifacts=artifacts)  # the process restarted: an empty chain
        w2 = make_worker(pool, market, fresh)
        await w2.start()
        assert w2.deployment_id != w1.deployment_id
        assert all(market.engine.accounts[k.address].collateral == 0 for k in MEMBER_KEYS)
        rep = await reconcile(pool, "s", fresh)
        assert rep.ok and len(rep.unverifiable) == old_batches and rep.trades == n1
        assert fresh.registry.functions.batchCount().call() == 0  # history not re-anchored
        # members deposit on the new chain and trade on
        await register_and_fund(market, w2, fresh)
        n2 = await trade(market, 10, seed=12)
        await w2.drain()
        rep = await reconcile(pool, "s", fresh)
        assert rep.ok and rep.trades == n1 + n2 and rep.pending_trades == 0
        assert fresh.registry.functions.batchCount().call() == rep.anchored > 0
        w2.close()
    finally:
        await market.close()


async def test_back_off_is_not_cut_short_by_new_trades(pool, pg_dsn, chain):
    """While the chain fails, new trades (wake-ups) do not make the worker retry sooner than
    its back-off: 20 wake-ups a second for 1.5 s give the retries of the back-off, no more."""
    import asyncio

    market = await open_test_market(pg_dsn, "s")
    try:
        worker = make_worker(pool, market, chain, retry_s=0.4, retry_max_s=0.8, poll_s=0.05)
        await worker.start()

        async def failing_step(force: bool = False) -> bool:
            raise ChainError("node unreachable")

        worker.step = failing_step  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run())
        for _ in range(30):  # 1.5 s of trades arriving
            worker.wake()
            await asyncio.sleep(0.05)
        worker.stop()
        await task
        # tries at ~0, 0.4, 1.2 s: three; without the fix, every wake-up retried (up to 30)
        assert 2 <= worker.failures <= 4, worker.failures
    finally:
        worker.close()
        await market.close()
