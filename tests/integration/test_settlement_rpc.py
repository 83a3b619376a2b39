"""Settlement against a real JSON-RPC node: Hardhat's network from npm (contracts/package.json,
settlement/devnode.py), chain id 1337, cancun. The worker settles there with an
``eth_call`` before every anchor (as on any node); a node rolled back with
``evm_snapshot``/``evm_revert`` is noticed and healed by re-sending the stored
transactions; a node restarted empty is refused, never redeployed on silently;
reconcile reports a batch in flight without failing.

Without node or the npm hardhat package these tests fail (they do not skip): `make venv`
installs it (npm ci in contracts/)."""

from __future__ import annotations

import asyncio

import pytest
from support.market import open_test_market
from support.settlement import MEMBER_KEYS, assert_settled, make_worker, register_and_fund, trade

from exchange.tools.cli import main
from settlement.bench import bench_settlement
from settlement.chain import Chain
from settlement.devnode import DEV_OPERATOR_KEY, DevNode, DevNodeUnavailable
from settlement.proofs import ProofService, verify_proof
from settlement.reconcile import reconcile
from settlement.worker import DeploymentLost, SettlementStartError

pytestmark = pytest.mark.integration


@pytest.fixture
def node():
    """A fresh Hardhat node on a free port of 127.0.0.1, its members given gas money."""
    try:
        DevNode.check_installed()
    except DevNodeUnavailable as exc:
        pytest.fail(f"these tests need the Hardhat dev node: {exc}")
    with DevNode() as n:
        for acct in MEMBER_KEYS:
            n.set_balance(acct.address, 10**20)
        yield n


def _chain(node: DevNode, artifacts) -> Chain:
    return Chain.rpc(node.url, DEV_OPERATOR_KEY, artifacts)


async def _states(pool) -> dict[int, str]:
    return {r["batch_id"]: r["state"] for r in await pool.fetch("SELECT batch_id, state FROM settlement_batches")}


async def _assert_settled(pool, market, chain, n_trades: int) -> None:
    """Reconcile OK, every batch anchored, collateral as on chain, every proof verifying on the node."""
    rep = await assert_settled(pool, market, chain)
    assert rep.trades == n_trades and not rep.in_flight
    proofs = ProofService(pool, "s", chain)
    ids = [r["trade_id"] for r in await pool.fetch("SELECT trade_id FROM trades WHERE market_id = 's'")]
    assert len(ids) == n_trades
    for tid in ids:
        p = await proofs.trade_proof(tid)
        assert p["chain_id"] == 1337 and verify_proof(p, chain.registry), tid


async def test_worker_settles_on_the_hardhat_node_and_reconcile_tells_in_flight_from_wrong(
        pool, pg_dsn, artifacts, node, monkeypatch, capsys):
    market = await open_test_market(pg_dsn, "s")
    chain = _chain(node, artifacts)
    worker = make_worker(pool, market, chain, signing_chain_id=1337)
    try:
        assert chain.chain_id == 1337 and not chain.is_in_process
        assert worker.simulate_first  # an eth_call before every anchorBatch, as on any node
        await worker.start()  # chain id and the cancun probe checked, contracts deployed
        await register_and_fund(market, worker, chain)
        n = await trade(market, 30, seed=7)
        await worker.drain()
        assert set((await _states(pool)).values()) == {"anchored"}
        assert worker.stats["batches_anchored"] >= 4 and worker.alert is None
        await _assert_settled(pool, market, chain, n)

        # a batch formed but not sent yet: in flight, not a difference; the CLI exits 0
        n += await trade(market, 4, seed=8)
        await worker.ingest()
        assert await worker.form_batch(force=True)
        rep = await reconcile(pool, "s", chain)
        assert rep.ok and len(rep.in_flight) == 1 and "prepared" in rep.in_flight[0], rep.as_dict()
        for k, v in {"DATABASE_URL": pg_dsn, "MARKET_ID": "s", "CHAIN_RPC_URL": node.url,
                     "CHAIN_OPERATOR_KEY": DEV_OPERATOR_KEY}.items():
            monkeypatch.setenv("VOLTBOURSE_" + k, v)
        assert await asyncio.to_thread(main, ["settlement", "reconcile"]) == 0
        out = capsys.readouterr().out
        assert "1 in flight" in out and ": OK" in out and "(in flight) batch" in out, out
        # something wrong is still wrong: a recorded root altered -> exit 1
        bid = max(await _states(pool))
        await pool.execute("UPDATE settlement_batches SET root = '0x' || repeat('ab', 32) WHERE batch_id = $1", bid)
        assert await asyncio.to_thread(main, ["settlement", "reconcile"]) == 1
        assert "DIFFERENCES" in capsys.readouterr().out
    finally:
        worker.close()
        await market.close()


async def test_node_rolled_back_is_healed_by_resending_the_stored_transactions(pool, pg_dsn, artifacts, node):
    market = await open_test_market(pg_dsn, "s")
    chain = _chain(node, artifacts)
    worker = make_worker(pool, market, chain, signing_chain_id=1337, check_s=0)
    try:
        await worker.start()
        await register_and_fund(market, worker, chain)
        n = await trade(market, 20, seed=51)
        await worker.drain()
        kept = set(await _states(pool))
        snap = node.snapshot()
        head = chain.w3.eth.block_number
        n += await trade(market, 30, seed=52)
        await worker.drain()
        lost = {r["batch_id"]: r["tx_hash"] for r in await pool.fetch("SELECT * FROM settlement_batches")
                if r["batch_id"] not in kept}
        assert len(lost) >= 3
        node.revert(snap)  # the node loses every block since the snapshot
        node.mine(2)
        assert chain.w3.eth.block_number == head + 2
        assert chain.registry.functions.batchCount().call() == len(kept)
        # the check notices, puts the lost batches back to `sent` and alerts
        assert await worker.check_chain() is True
        assert "chain rollback" in worker.alert and ", ".join(map(str, sorted(lost))) in worker.alert
        assert all(s == "sent" for b, s in (await _states(pool)).items() if b in lost)
        # the stored transactions go out again, as they were, in nonce order
        await worker.drain()
        rows = {r["batch_id"]: r for r in await pool.fetch("SELECT * FROM settlement_batches")}
        assert all(r["state"] == "anchored" for r in rows.values())
        assert all(rows[b]["tx_hash"] == h and rows[b]["heals"] == 1 for b, h in lost.items())
        assert worker.stats["rollbacks"] == 1 and worker.stats["batches_healed"] == len(lost)
        assert worker.alert is None
        await _assert_settled(pool, market, chain, n)
    finally:
        worker.close()
        await market.close()


async def test_node_restarted_empty_is_refused_never_redeployed_on_silently(pool, pg_dsn, artifacts, node):
    market = await open_test_market(pg_dsn, "s")
    chain = _chain(node, artifacts)
    w1 = make_worker(pool, market, chain, signing_chain_id=1337)
    workers = [w1]
    try:
        await w1.start()
        await register_and_fund(market, w1, chain)
        await trade(market, 10, seed=41)
        await w1.drain()
        registry = chain.registry.address
        anchored = len(await _states(pool))
        node.restart()  # the same URL, an empty node (Hardhat keeps nothing)
        for acct in MEMBER_KEYS:
            node.set_balance(acct.address, 10**20)
        # while running: a clear alert, nothing sent to the empty address
        await trade(market, 5, seed=42)
        w1._next_check = 0
        for _ in range(2):
            with pytest.raises(DeploymentLost):
                await w1.step(force=True)
        assert chain.mined_nonce() == 0 and not chain.has_code(registry)
        assert "lost the settlement contracts" in w1.alert and "voltbourse settlement redeploy --yes" in w1.alert
        # after a restart of the exchange: a refusal saying what to do, no deployment
        w2 = make_worker(pool, market, _chain(node, artifacts), signing_chain_id=1337)
        workers.append(w2)
        with pytest.raises(SettlementStartError) as exc:
            await w2.start()
        msg = str(exc.value)
        assert "voltbourse settlement redeploy --yes" in msg and f"{anchored} anchored batches unverifiable" in msg
        assert "another chain" in msg or registry in msg
        assert await pool.fetchval("SELECT count(*) FROM settlement_deployments") == 1
        assert w2.chain.mined_nonce() == 0  # nothing was deployed nor sent
    finally:
        for w in workers:
            w.close()
        await market.close()


async def test_thin_flow_policy_waits_for_min_batch_bounded_by_thin_max_age(pool, pg_dsn, chain):
    """The batching policy `bench settlement` measures here (in-process: the rule does not
    depend on the chain): past max_age_s a batch still waits for min_batch trades, but
    never longer than thin_max_age_s."""
    market = await open_test_market(pg_dsn, "s")
    worker = make_worker(pool, market, chain, batch_size=1000, max_age_s=0.05, min_batch=10, thin_max_age_s=0.6)
    try:
        await worker.start()
        await register_and_fund(market, worker, chain)
        n1 = await trade(market, 2, seed=71)
        assert 0 < n1 < 10
        await worker.step()
        await asyncio.sleep(0.2)  # past max_age_s, below min_batch, before thin_max_age_s
        await worker.step()
        assert await _states(pool) == {}
        n2 = await trade(market, 10, seed=72)
        assert n1 + n2 >= 10
        await worker.step()
        assert await _states(pool) == {1: "anchored"}  # min_batch reached: formed at once
        assert await pool.fetchval("SELECT trade_count FROM settlement_batches WHERE batch_id = 1") == n1 + n2
        n3 = await trade(market, 2, seed=73)
        await worker.step()
        await asyncio.sleep(0.2)
        await worker.step()
        assert await _states(pool) == {1: "anchored"}
        await asyncio.sleep(0.5)  # the oldest waited thin_max_age_s: formed however small
        await worker.step()
        assert await _states(pool) == {1: "anchored", 2: "anchored"}
        assert await pool.fetchval("SELECT trade_count FROM settlement_batches WHERE batch_id = 2") == n3
    finally:
        worker.close()
        await market.close()


async def test_bench_settlement_on_the_node(pool, pg_dsn, node):
    """`bench settlement --rpc` in small: every phase on the node, fresh contracts, reconcile OK."""
    out = await asyncio.to_thread(bench_settlement, 300, 3, 100, 50, 1.0, 0.5, pg_dsn, rpc=node.url, flow_s=10.0,
                                  flow_speed=2.0, min_batch=20, thin_max_age_s=2.0)
    assert out["chain"] == "rpc" and out["reconcile_ok"] is True, out
    for key in ("trades", "batch_size", "batches", "seconds", "trades_per_s", "gas_per_trade", "members",
                "stream_rate", "stream_trades", "max_age_s", "lag_p50_s", "lag_p99_s"):  # the in-process bench's
        assert key in out, key
    assert out["trades"] > 300 and out["stream_trades"] > 0 and out["flow_trades"] > 0
    assert 0 < out["gas_per_trade"] < out["gas_per_trade_thin"] < out["gas_per_trade_realistic"], out
    assert out["batch_size_realistic"] < out["batch_size_thin"]
