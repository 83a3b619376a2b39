"""The settlement worker when the chain misbehaves, against a real PostgreSQL, the real
runtime and the real in-process EVM (eth-tester/py-evm) with the contracts compiled from
source: reverts decoded and blocked (not re-sent forever), nonces out of step with the
node, deposits in blocks the cursor already passed, a node that lost blocks or the whole
deployment, a node of the wrong chain or EVM. The node's faults are real where eth-tester
can make them (snapshot/revert loses blocks, a Shanghai EVM lacks MCOPY); a node's
"already known" answer is injected at the provider."""

from __future__ import annotations

import asyncio

import pytest
from eth.vm.forks import ShanghaiVM
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
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
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import Web3RPCError

from exchange.core.model import PlaceOrder, RegisterMember, Side
from settlement.chain import CALL_GAS, Chain
from settlement.plugin import SettlementCollector
from settlement.reconcile import reconcile
from settlement.reverts import ALREADY_KNOWN, NONCE_TOO_HIGH, NONCE_TOO_LOW, classify_send_error
from settlement.worker import DeploymentLost, RedeployRefused, SettlementStartError, approve_redeploy

pytestmark = pytest.mark.integration

A, B, C, D, E, F = (k.address for k in MEMBER_KEYS)


class Crash(BaseException):
    """Raised by the fault hook: the worker 'dies' at that point."""


async def _assert_settled(pool, market, chain, n_trades=None):
    rep = await reconcile(pool, "s", chain)
    assert rep.ok, rep.differences
    assert rep.pending_trades == 0
    if n_trades is not None:
        assert rep.trades == n_trades
    assert chain.registry.functions.batchCount().call() == rep.batches == rep.anchored
    for acct in MEMBER_KEYS:
        a = market.engine.accounts[acct.address]
        assert a.collateral == chain.collateral(acct.address), acct.address
        assert a.net_payable == 0


async def _cross(market, buyer: str, seller: str, price: int = 20_000, qty: int = 1_000) -> None:
    """One trade: ``seller`` rests a sell, ``buyer`` takes it (the buyer pays)."""
    pid = open_products(market.engine)[0]
    rt = market.runtime
    await rt.submit(PlaceOrder(0, seller, pid, Side.SELL, price, qty))
    res = await rt.submit(PlaceOrder(0, buyer, pid, Side.BUY, price, qty))
    assert any(ev.type == "trade" for ev in res.events), res.events


async def _states(pool) -> dict[int, str]:
    return {r["batch_id"]: r["state"] for r in await pool.fetch("SELECT batch_id, state FROM settlement_batches")}


def _metrics(worker) -> dict[str, list]:
    return {fam.name: [(s.labels, s.value) for s in fam.samples] for fam in SettlementCollector(worker).collect()}


def _penalise_on_chain(worker, chain, member: str, amount: int, event_id: int = 99):
    """Take ``amount`` of ``member``'s collateral on chain behind the engine's back (a
    penalty settled by hand): the engine still believes the member can pay."""
    call = chain.registry.functions.settlePayouts(event_id, [member], [-amount])
    return worker._chain(chain.transact, call, CALL_GAS)


# ------------------------------------------------------------------------------ 1. reverts
async def test_custom_error_blocks_the_batch_and_only_batches_sharing_its_members_wait(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        # simulate=True: every anchorBatch is an eth_call first, as on a JSON-RPC node
        worker = await funded_worker(pool, market, chain, batch_size=1, recheck_s=0, simulate=True)
        await _penalise_on_chain(worker, chain, A, DEPOSIT)  # A has nothing left on chain
        await _cross(market, buyer=A, seller=B)  # batch 1 {A, B}: A cannot pay
        await _cross(market, buyer=C, seller=D)  # batch 2 {C, D}: independent
        await _cross(market, buyer=B, seller=E)  # batch 3 {B, E}: shares B with batch 1
        await _cross(market, buyer=E, seller=F)  # batch 4 {E, F}: shares E with batch 3
        nonce_before = chain.mined_nonce()
        await worker.drain()
        assert await _states(pool) == {1: "blocked", 2: "anchored", 3: "prepared", 4: "prepared"}
        row = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = 1")
        err = row["revert_error"]
        assert err["name"] == "InsufficientCollateral" and err["args"]["member"] == A
        assert err["args"]["collateral"] == 0 and err["args"]["needed"] > 0
        # it was never sent: the eth_call said it would revert, no gas spent on it
        assert row["attempts"] == 0 and row["tx_hash"] is None and row["raw_tx"] is None
        assert chain.mined_nonce() == nonce_before + 1  # batch 2 only
        # the alert names the error, the batch and who waits behind it
        assert "batch 1 blocked" in worker.alert and "InsufficientCollateral" in worker.alert
        assert "batches 3, 4 wait behind it" in worker.alert
        status = await worker.status()
        assert status["blocked"][0]["batch_id"] == 1 and status["blocked"][0]["name"] == "InsufficientCollateral"
        assert status["blocked"][0]["waiting"] == [3, 4] and "blocked" in status["alerts"]
        assert next(b for b in status["batches"] if b["batch_id"] == 1)["error"]["name"] == "InsufficientCollateral"
        m = _metrics(worker)
        assert m["voltbourse_settlement_blocked_batch"] == [({"batch_id": "1", "error": "InsufficientCollateral"}, 1)]
        assert ({"kind": "blocked"}, 1) in m["voltbourse_settlement_alert_kind"]
        assert m["voltbourse_settlement_alert"][0][1] == 1
        # the independent batch settled in the engine; the waiting ones did not
        assert market.engine.accounts[C].net_payable == 0
        assert market.engine.accounts[A].net_payable > 0 and market.engine.accounts[F].net_payable < 0
        # the engine no longer counts money A does not have on chain: A cannot buy more on it
        assert market.engine.accounts[A].collateral == 0
        pid = open_products(market.engine)[0]
        res = await market.runtime.submit(PlaceOrder(0, A, pid, Side.BUY, 20_000, 1_000))
        assert res.events[0].type == "rejected"
        # more rounds send nothing: no transaction is re-sent while it would still revert
        for _ in range(3):
            await worker.step()
        assert chain.mined_nonce() == nonce_before + 1
        assert (await _states(pool))[1] == "blocked"
        # the member gets collateral on chain again: the eth_call passes, everything goes through in order
        await worker.credit_member(A, DEPOSIT)
        await worker.drain()
        assert set((await _states(pool)).values()) == {"anchored"}
        assert worker.alert is None and worker.blocked == {}
        assert _metrics(worker)["voltbourse_settlement_blocked_batches"][0][1] == 0
        rep = await reconcile(pool, "s", chain)
        assert rep.ok, rep.differences
        for k in MEMBER_KEYS:
            acct = market.engine.accounts[k.address]
            assert acct.collateral == chain.collateral(k.address) and acct.net_payable == 0
    finally:
        worker.close()
        await market.close()


async def test_mined_revert_is_decoded_and_never_resent(pool, pg_dsn, chain):
    """On the in-process EVM a batch is sent without an eth_call first: its mined revert is
    decoded by replaying the call, and the batch is blocked after that one reverted
    transaction, not re-sent round after round. The worker is cautious afterwards: the
    next batch that would revert is caught by its eth_call, never sent."""
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = make_worker(pool, market, chain, batch_size=1, recheck_s=3600)
        assert worker.simulate_first is False
        await worker.start()
        await register_and_fund(market, worker, chain)
        await _penalise_on_chain(worker, chain, A, DEPOSIT)
        await _cross(market, buyer=A, seller=D)  # batch 1 {A, D}
        nonce_before = chain.mined_nonce()
        await worker.drain()
        for _ in range(3):
            await worker.step()
        row = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = 1")
        assert row["state"] == "blocked" and row["reverts"] == 1 and row["attempts"] == 1
        assert row["revert_error"]["name"] == "InsufficientCollateral" and row["revert_error"]["args"]["member"] == A
        assert "reverted in tx" in row["last_error"]
        assert chain.mined_nonce() == nonce_before + 1  # exactly one (reverted) transaction
        assert worker.stats["reverts"] == 1 and "InsufficientCollateral" in worker.alert
        assert _metrics(worker)["voltbourse_settlement_reverts"][0][1] == 1
        # cautious now: B (no member in common with batch 1) cannot pay either; caught before sending
        await _penalise_on_chain(worker, chain, B, DEPOSIT, event_id=98)
        await _cross(market, buyer=B, seller=C)  # batch 2 {B, C}
        nonce_before = chain.mined_nonce()
        await worker.drain()
        row = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = 2")
        assert row["state"] == "blocked" and row["attempts"] == 0 and row["reverts"] == 0
        assert chain.mined_nonce() == nonce_before
        assert "batch 1 blocked" in worker.alert and "batch 2 blocked" in worker.alert
    finally:
        worker.close()
        await market.close()


async def test_revert_without_a_reason_is_signed_anew_a_bounded_number_of_times(pool, pg_dsn, chain):
    """An anchorBatch that runs out of gas reverts without data: signed anew at most
    MAX_BLIND_REVERTS times, then blocked with an alert that says so."""
    from settlement.worker import MAX_BLIND_REVERTS

    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain, batch_size=1, recheck_s=3600)
        await _cross(market, buyer=A, seller=B)
        real_anchor_call = chain.anchor_call
        chain.anchor_call = lambda *a: (real_anchor_call(*a)[0], 30_000)  # type: ignore[method-assign]
        nonce_before = chain.mined_nonce()
        for _ in range(10):
            await worker.step(force=True)
        row = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = 1")
        assert row["state"] == "blocked" and row["reverts"] == MAX_BLIND_REVERTS
        assert chain.mined_nonce() == nonce_before + MAX_BLIND_REVERTS
        assert row["revert_error"]["name"] is None and "batch 1 blocked" in worker.alert
    finally:
        worker.close()
        await market.close()


# ------------------------------------------------------------------------------ 2. nonces
def test_send_errors_are_classified():
    known = Web3RPCError("{'code': -32003, 'message': 'transaction already imported'}",
                         rpc_response={"jsonrpc": "2.0", "id": 1,
                                       "error": {"code": -32003, "message": "transaction already imported"}})
    assert classify_send_error(known) == ALREADY_KNOWN
    assert classify_send_error(ValueError({"code": -32000, "message": "already known"})) == ALREADY_KNOWN
    assert classify_send_error(ValueError("Known transaction: 0xab")) == ALREADY_KNOWN
    assert classify_send_error(ValueError({"code": -32000, "message": "nonce too low"})) == NONCE_TOO_LOW
    assert classify_send_error(ValueError("Invalid transaction nonce: Expected 3, but got 2")) == NONCE_TOO_LOW
    assert classify_send_error(ValueError("Invalid transaction nonce: Expected 3, but got 8")) == NONCE_TOO_HIGH
    assert classify_send_error(ValueError({"code": -32003, "message": "nonce too low"})) == NONCE_TOO_LOW
    assert classify_send_error(ValueError({"code": -32003, "message": "replacement transaction underpriced"})) \
        not in (ALREADY_KNOWN, NONCE_TOO_LOW, NONCE_TOO_HIGH)
    assert classify_send_error(ConnectionError("connection refused")) not in (ALREADY_KNOWN, NONCE_TOO_LOW)


def _node_answers_already_known(chain, *, forward: bool):
    """The node answers -32003 "already imported" to every raw transaction; with
    ``forward`` it did take it (its reply to the first send was lost)."""
    real = chain.w3.eth.send_raw_transaction
    sent = []

    def send(raw):
        sent.append(bytes(raw))
        if forward:
            real(raw)
        raise Web3RPCError("{'code': -32003, 'message': 'transaction already imported'}",
                           rpc_response={"jsonrpc": "2.0", "id": 1,
                                         "error": {"code": -32003, "message": "transaction already imported"}})

    chain.w3.eth.send_raw_transaction = send
    return real, sent


async def test_already_known_is_pending_never_a_failure(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    workers = []
    try:
        w0 = make_worker(pool, market, chain)
        workers.append(w0)
        await w0.start()
        await register_and_fund(market, w0, chain)
        # a node that took each transaction but answered "already imported": anchored, no error
        real, sent = _node_answers_already_known(chain, forward=True)
        n = await trade(market, 20, seed=21)
        await w0.drain()
        rows = await pool.fetch("SELECT * FROM settlement_batches ORDER BY batch_id")
        assert rows and all(r["state"] == "anchored" and r["attempts"] == 1 for r in rows)
        assert len(sent) == len(rows) and w0.failures == 0 and w0.alert is None
        chain.w3.eth.send_raw_transaction = real
        # a crash after recording `sent`; the restarted worker re-sends; the node has the
        # transaction in its pool ("already imported", not mined yet): pending, no failure,
        # the same transaction (never signed anew), anchored once the node mines it
        hits = []

        def fault(p):
            if p == "after_record_sent" and not hits:
                hits.append(p)
                raise Crash(p)

        w1 = make_worker(pool, market, chain, fault=fault)
        workers.append(w1)
        await w1.start()
        n += await trade(market, 5, seed=22)
        with pytest.raises(Crash):
            await w1.drain()
        b = await pool.fetchrow("SELECT * FROM settlement_batches WHERE state = 'sent'")
        c2 = reconnect(chain)
        w2 = make_worker(pool, market, c2)
        workers.append(w2)
        w2.resend_wait_s = 0.2
        await w2.start()
        real2, sent2 = _node_answers_already_known(c2, forward=False)
        assert await w2.send_pending() is False
        again = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = $1", b["batch_id"])
        assert again["state"] == "sent" and again["tx_hash"] == b["tx_hash"] and again["last_error"] is None
        assert sent2 == [bytes(b["raw_tx"])] and w2.alert is None
        real2(bytes(b["raw_tx"]))  # the node mines it
        c2.w3.eth.send_raw_transaction = real2
        await w2.drain()
        done = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = $1", b["batch_id"])
        assert done["state"] == "anchored" and done["tx_hash"] == b["tx_hash"] and done["attempts"] == 1
        await _assert_settled(pool, market, c2, n)
    finally:
        for w in workers:
            w.close()
        await market.close()


async def test_nonce_ahead_or_behind_the_node_is_reset_from_it(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    workers = []
    try:
        worker = make_worker(pool, market, chain)
        workers.append(worker)
        await worker.start()
        await register_and_fund(market, worker, chain)
        n = await trade(market, 15, seed=31)
        await worker.drain()
        # the remembered nonce ahead of the node (e.g. a transaction the node dropped)
        chain.set_nonce(chain.local_nonce + 3)
        n += await trade(market, 15, seed=32)
        await worker.drain()
        assert worker.stats["nonce_resets"] >= 1 and worker.alert is None
        # behind the node (another signer used the operator key)
        chain.set_nonce(chain.local_nonce - 2)
        n += await trade(market, 15, seed=33)
        await worker.drain()
        assert worker.stats["nonce_resets"] >= 2 and worker.alert is None
        await _assert_settled(pool, market, chain, n)
        # a stored, never broadcast transaction whose nonce another transaction then took:
        # signed anew (nonce from the node), anchored once
        hits = []

        def fault(p):
            if p == "after_record_sent" and not hits:
                hits.append(p)
                raise Crash(p)

        w1 = make_worker(pool, market, reconnect(chain), fault=fault)
        workers.append(w1)
        await w1.start()
        n += await trade(market, 5, seed=34)
        with pytest.raises(Crash):
            await w1.drain()
        b = await pool.fetchrow("SELECT * FROM settlement_batches WHERE state = 'sent'")
        other = reconnect(chain)
        other.attach(chain.token.address, chain.registry.address)
        other.mint(other.operator.address, 1)  # takes the stored transaction's nonce
        w2 = make_worker(pool, market, reconnect(chain))
        workers.append(w2)
        await w2.start()
        await w2.drain()
        again = await pool.fetchrow("SELECT * FROM settlement_batches WHERE batch_id = $1", b["batch_id"])
        assert again["state"] == "anchored" and again["tx_hash"] != b["tx_hash"]
        await _assert_settled(pool, market, w2.chain, n)
    finally:
        for w in workers:
            w.close()
        await market.close()


# ------------------------------------------------------------------------------ 3. scanning
async def _register(market, worker, chain):
    for acct in MEMBER_KEYS:
        await market.runtime.submit(RegisterMember(0, acct.address, collateral=None, export_capacity_w=10**9))
    await worker.scan_chain()


async def test_deposit_below_a_cursor_past_the_head_is_not_skipped(pool, pg_dsn, chain):
    """An earlier (buggy) cursor recorded beyond the head: a deposit in a block at or below
    it still reaches the engine, and the cursor is never saved past the head again."""
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = make_worker(pool, market, chain)
        await worker.start()
        await _register(market, worker, chain)
        head = chain.w3.eth.block_number
        await pool.execute("UPDATE settlement_deployments SET scanned_block = $1, scanned_hash = NULL",
                           head + 10)
        receipt = await worker._chain(chain.fund_member, MEMBER_KEYS[0], DEPOSIT)
        assert receipt["blockNumber"] <= head + 10
        await worker.scan_chain()
        assert market.engine.accounts[A].collateral == DEPOSIT
        scanned = await pool.fetchval("SELECT scanned_block FROM settlement_deployments")
        assert scanned <= chain.w3.eth.block_number
        assert worker.stats["rescans"] == 1
    finally:
        worker.close()
        await market.close()


@pytest.mark.parametrize("remine", [0, 12], ids=["head-below-cursor", "head-past-cursor-new-blocks"])
async def test_deposit_after_a_rollback_is_seen(pool, pg_dsn, chain, remine):
    """Snapshot; blocks mined and scanned; revert to the snapshot (a node that lost them);
    a deposit lands in a block number the worker already scanned. With ``remine`` the
    node mines past the old cursor before the worker looks again: only the block hash
    shows the chain changed."""
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = make_worker(pool, market, chain)
        await worker.start()
        await _register(market, worker, chain)
        snap = chain.tester.take_snapshot()
        chain.tester.mine_blocks(8)
        await worker.scan_chain()
        scanned = await pool.fetchval("SELECT scanned_block FROM settlement_deployments")
        assert scanned == chain.w3.eth.block_number
        chain.tester.revert_to_snapshot(snap)
        receipt = await worker._chain(chain.fund_member, MEMBER_KEYS[1], DEPOSIT)
        assert receipt["blockNumber"] <= scanned  # a block number the cursor already passed
        chain.tester.mine_blocks(remine)
        while await worker.scan_chain():
            pass
        assert market.engine.accounts[B].collateral == DEPOSIT
        assert worker.stats["rescans"] >= 1
        assert await pool.fetchval("SELECT scanned_block FROM settlement_deployments") <= chain.w3.eth.block_number
    finally:
        worker.close()
        await market.close()


# ------------------------------------------------------------------------------ 4. start-up checks
async def test_refuses_a_node_of_another_chain_id(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = make_worker(pool, market, chain, signing_chain_id=4242)  # orders signed for another chain
        with pytest.raises(SettlementStartError) as exc:
            await worker.start()
        msg = str(exc.value)
        assert f"chain id {chain.chain_id}" in msg and "4242" in msg and "VOLTBOURSE_CHAIN_ID" in msg
        assert await pool.fetchval("SELECT count(*) FROM settlement_deployments") == 0  # nothing deployed
        ok = make_worker(pool, market, chain, signing_chain_id=chain.chain_id)
        await ok.start()
        ok.close()
        worker.close()
    finally:
        await market.close()


async def test_refuses_an_evm_below_cancun(pool, pg_dsn, artifacts):
    market = await open_test_market(pg_dsn, "s")
    try:
        backend = PyEVMBackend(vm_configuration=((0, ShanghaiVM),))
        tester = EthereumTester(backend)
        w3 = Web3(EthereumTesterProvider(tester))
        old = Chain(w3, Account.from_key(backend.account_keys[0].to_hex()), in_process=True, tester=tester,
                    artifacts=artifacts)
        worker = make_worker(pool, market, old)
        with pytest.raises(SettlementStartError) as exc:
            await worker.start()
        assert "cancun" in str(exc.value) and "MCOPY" in str(exc.value)
        assert await pool.fetchval("SELECT count(*) FROM settlement_deployments") == 0
        worker.close()
    finally:
        await market.close()


def _keeping_state(chain):
    """The same node seen as one that keeps its state (not the ephemeral in-process EVM)."""
    return Chain(chain.w3, chain.operator, in_process=True, tester=chain.tester, artifacts=chain.artifacts,
                 ephemeral=False)


async def test_node_that_lost_the_deployment_is_refused_until_the_operator_approves(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    workers = []
    try:
        snap = chain.tester.take_snapshot()  # before the contracts exist
        node = _keeping_state(chain)
        w1 = make_worker(pool, market, node)
        workers.append(w1)
        await w1.start()
        await register_and_fund(market, w1, node)
        await trade(market, 10, seed=41)
        await w1.drain()
        registry = node.registry.address
        chain.tester.revert_to_snapshot(snap)  # the node restarted empty
        # while running: a clear alert, nothing sent to the empty address
        await trade(market, 5, seed=42)
        w1._next_check = 0
        nonce = node.mined_nonce()
        with pytest.raises(DeploymentLost):
            await w1.step(force=True)
        with pytest.raises(DeploymentLost):
            await w1.step(force=True)
        assert node.mined_nonce() == nonce
        assert "lost the settlement contracts" in w1.alert and registry in w1.alert
        assert "voltbourse settlement redeploy --yes" in w1.alert
        assert ({"kind": "deployment"}, 1) in _metrics(w1)["voltbourse_settlement_alert_kind"]
        # after a restart: a refusal that says what to do, no silent redeployment
        w2 = make_worker(pool, market, _keeping_state(chain))
        workers.append(w2)
        with pytest.raises(SettlementStartError) as exc:
            await w2.start()
        msg = str(exc.value)
        assert registry in msg and "voltbourse settlement redeploy --yes" in msg and "unverifiable" in msg
        assert await pool.fetchval("SELECT count(*) FROM settlement_deployments") == 1
        # the operator approves: the next start retires the old deployment and deploys anew
        said = await approve_redeploy(pool, "s", _keeping_state(chain))
        assert "approved" in said
        w3 = make_worker(pool, market, _keeping_state(chain))
        workers.append(w3)
        await w3.start()
        assert w3.deployment_id != w1.deployment_id
        assert await pool.fetchval("SELECT count(*) FROM settlement_deployments WHERE active") == 1
        # an intact deployment is never redeployed on request
        with pytest.raises(RedeployRefused):
            await approve_redeploy(pool, "s", w3.chain)
    finally:
        for w in workers:
            w.close()
        await market.close()


def test_redeploy_command_needs_yes(monkeypatch, capsys):
    from exchange.tools.cli import main

    monkeypatch.setenv("VOLTBOURSE_CHAIN_RPC_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("VOLTBOURSE_CHAIN_OPERATOR_KEY", "0x" + "11" * 32)
    assert main(["settlement", "redeploy"]) == 1
    assert "unverifiable" in capsys.readouterr().out


# ------------------------------------------------------------------------------ 5. rollbacks healed
async def test_rolled_back_node_is_healed_by_resending_in_nonce_order(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain, check_s=0)
        n = await trade(market, 20, seed=51)
        await worker.drain()
        kept = set(await _states(pool))
        snap = chain.tester.take_snapshot()
        n += await trade(market, 20, seed=52)
        await worker.drain()
        contiguous = {r["batch_id"]: r["tx_hash"] for r in await pool.fetch("SELECT * FROM settlement_batches")
                      if r["batch_id"] not in kept}
        await worker._chain(chain.mint, "0x000000000000000000000000000000000000dEaD", 1)  # not re-sendable
        n += await trade(market, 10, seed=53)
        await worker.drain()
        after_gap = {r["batch_id"]: r["tx_hash"] for r in await pool.fetch("SELECT * FROM settlement_batches")
                     if r["batch_id"] not in kept and r["batch_id"] not in contiguous}
        assert contiguous and after_gap
        lost = sorted(contiguous) + sorted(after_gap)
        chain.tester.revert_to_snapshot(snap)  # the node lost every block after the snapshot
        chain.tester.mine_blocks(2)
        assert chain.registry.functions.batchCount().call() == len(kept)
        # the periodic check notices, puts them back, alerts; the same step re-sends them
        assert await worker.check_chain() is True
        assert "chain rollback" in worker.alert and ", ".join(map(str, lost)) in worker.alert
        states = await _states(pool)
        assert all(states[b] == "sent" for b in lost)
        status = await worker.status()
        assert "rollback" in status["alerts"]
        assert _metrics(worker)["voltbourse_settlement_batches_healed"][0][1] == len(lost)
        await worker.drain()
        rows = {r["batch_id"]: r for r in await pool.fetch("SELECT * FROM settlement_batches")}
        assert all(r["state"] == "anchored" for r in rows.values())
        # the stored transactions went out again as they were, in nonce order; those after the
        # lost operator transaction (a gap in the nonces) were signed anew
        assert all(rows[b]["tx_hash"] == h and rows[b]["heals"] == 1 for b, h in contiguous.items())
        assert all(rows[b]["tx_hash"] != h for b, h in after_gap.items())
        assert worker.alert is None
        await _assert_settled(pool, market, chain, n)
    finally:
        worker.close()
        await market.close()


async def test_periodic_check_runs_from_the_worker_loop(pool, pg_dsn, chain):
    """No manual call: the running worker's own check notices the rollback and heals it."""
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain, check_s=0.1, poll_s=0.05, max_age_s=0.05)
        snap = chain.tester.take_snapshot()
        n = await trade(market, 20, seed=61)
        await worker.drain()
        anchored = chain.registry.functions.batchCount().call()
        assert anchored > 0
        chain.tester.revert_to_snapshot(snap)
        task = asyncio.create_task(worker.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if worker.stats["rollbacks"] and chain.registry.functions.batchCount().call() == anchored \
                    and worker.alert is None:
                break
        worker.stop()
        await task
        assert worker.stats["rollbacks"] == 1 and worker.stats["batches_healed"] == anchored
        await worker.drain()
        await _assert_settled(pool, market, chain, n)
    finally:
        worker.close()
        await market.close()
