"""The default in-process chain on disk (settlement/chainstore.py): reopened where it stopped
with its blocks, state, receipts and nonces; a process killed with SIGKILL at any moment
leaves whole blocks only; the settlement worker killed at each of its steps resumes on the
reopened chain (same deployment, reconcile OK, collateral equal, earlier proofs verifying);
a chain that lost its last blocks (an older copy of its directory) is healed by re-sending;
a chain directory that was lost is refused rather than deployed over silently.

Real parts only: real PostgreSQL, the real runtime, py-evm over SQLite files in tmp_path,
the contracts compiled from source."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth.db.schema import SchemaV1
from support.market import open_test_market
from support.paths import ROOT, TESTS
from support.settlement import (
    MEMBER_KEYS,
    anchored_proofs,
    assert_settled,
    funded_worker,
    make_worker,
    register_and_fund,
    trade,
)

from exchange.runtime.config import load_settings
from settlement.chain import Chain, chain_data_path
from settlement.chainstore import CHAIN_ID_KEY, TESTER_CHAIN_ID, ChainStoreLocked, SqliteChainDB
from settlement.proofs import verify_proof
from settlement.reconcile import reconcile
from settlement.worker import FAULT_POINTS, SettlementStartError, approve_redeploy

pytestmark = pytest.mark.integration

HOLDER = "0x000000000000000000000000000000000000b0b1"  # checksummed as it is


class Crash(BaseException):
    """Raised by the fault hook: the worker 'dies' at that point."""


# ------------------------------------------------------------------ the store


def test_reopened_chain_has_its_blocks_state_receipts_and_nonce(tmp_path, artifacts):
    d = tmp_path / "chain"
    c1 = Chain.in_process(artifacts=artifacts, data_dir=d)
    dep = c1.deploy()
    first = c1.mint(HOLDER, 5)
    for _ in range(30):
        c1.mint(HOLDER, 1)
    head, nonce, genesis = c1.w3.eth.block_number, c1.pending_nonce(), c1.genesis_hash
    assert not c1.ephemeral  # a lost deployment is refused on it, as on a node
    c1.close()
    c1.close()  # idempotent

    c2 = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        assert (c2.genesis_hash, c2.w3.eth.block_number, c2.pending_nonce()) == (genesis, head, nonce)
        c2.attach(dep.token, dep.registry)
        assert c2.has_code(dep.registry)
        assert c2.token.functions.balanceOf(HOLDER).call() == 35
        # an old receipt is found through py-evm's transaction index (not by walking back every block)
        old = c2.receipt("0x" + bytes(first["transactionHash"]).hex(), timeout=0)
        assert old is not None and old["blockNumber"] == first["blockNumber"] and old["status"] == 1
        assert c2.receipt("0x" + "ab" * 32, timeout=0) is None
        # the chain goes on from there: same operator nonce sequence, next block
        r = c2.mint(HOLDER, 1)
        assert r["blockNumber"] == head + 1 and c2.pending_nonce() == nonce + 1
    finally:
        c2.close()


def test_one_process_per_chain_directory(tmp_path, artifacts):
    d = tmp_path / "chain"
    c1 = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        with pytest.raises(ChainStoreLocked, match="in use by another process"):
            Chain.in_process(artifacts=artifacts, data_dir=d)
    finally:
        c1.close()
    Chain.in_process(artifacts=artifacts, data_dir=d).close()  # released on close


def test_a_failed_atomic_batch_leaves_nothing_and_the_head_commits_a_block(tmp_path):
    db = SqliteChainDB(tmp_path / "kv")
    try:
        with pytest.raises(ValueError), db.atomic_batch() as batch:
            batch[b"k1"] = b"v1"
            raise ValueError("py-evm failed half way")
        assert b"k1" not in db
        db[b"k2"] = b"v2"  # not committed yet: no block has been persisted
        with db.atomic_batch() as batch:
            batch[b"k3"] = b"v3"
            batch[SchemaV1.make_canonical_head_hash_lookup_key()] = b"\x01" * 32  # a block's last write
        db[b"k4"] = b"v4"  # the next block's first write, uncommitted
        db.abandon()  # killed
        db = SqliteChainDB(tmp_path / "kv")
        assert b"k2" in db and b"k3" in db and db.has_chain() and b"k4" not in db
    finally:
        db.close()


def test_chain_data_dir_setting():
    s = load_settings(market_id="community", chain_data_dir=None)  # None: the default, whatever the environment
    assert chain_data_path(s) == s.data_dir / "chain" / "community"  # next to <data_dir>/pg
    assert chain_data_path(load_settings(chain_data_dir="ephemeral")) is None
    assert chain_data_path(load_settings(chain_data_dir="/srv/vb-chain")) == Path("/srv/vb-chain")
    odd = chain_data_path(load_settings(market_id="../x y", chain_data_dir=None))
    assert odd is not None and odd.parent == s.data_dir / "chain" and "/" not in odd.name and odd.name != ".."
    with pytest.raises(ValueError, match="inside the source checkout"):
        load_settings(chain_data_dir=str(ROOT / "chain"))


_CHILD = """
import sys
from pathlib import Path
from settlement.chain import Chain
chain = Chain.in_process(data_dir=Path(sys.argv[1]))
if len(sys.argv) > 2:
    chain.attach(sys.argv[2], sys.argv[3])
else:
    dep = chain.deploy()
    print("DEPLOYED", dep.token, dep.registry, dep.block, flush=True)
print("READY", chain.w3.eth.block_number, flush=True)
while True:
    r = chain.mint(HOLDER, 1)
    print("MINED", r["blockNumber"], flush=True)
""".replace("HOLDER", repr(HOLDER))


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_whole_blocks(tmp_path, artifacts):
    """A process minting one block after another is killed -9 at random moments, five
    times; each reopen finds every acknowledged block, a head whose state is exactly the
    blocks below it (one token unit per block since the deployment), and goes on."""
    d = tmp_path / "chain"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    rng = random.Random(5)
    addresses: list[str] = []
    deploy_block = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(d), *addresses], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        acked = 0
        try:
            line = proc.stdout.readline()
            if line.startswith("DEPLOYED"):
                _, token, registry, block = line.split()
                addresses, deploy_block = [token, registry], int(block)
                line = proc.stdout.readline()
            assert line.startswith("READY"), line + proc.stderr.read()
            start = int(line.split()[1])
            assert start >= acked
            deadline = time.monotonic() + rng.uniform(0.3, 1.5)
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("MINED"):
                    acked = int(line.split()[1])
            os.kill(proc.pid, signal.SIGKILL)
            for line in proc.stdout.read().splitlines():
                if line.startswith("MINED"):
                    acked = int(line.split()[1])
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert acked > start, "the child mined nothing"
        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        try:
            chain.attach(*addresses)
            head = chain.w3.eth.block_number
            assert head >= acked  # every acknowledged block is there
            assert head <= acked + 1  # at most one more: mined, killed before it printed
            assert chain.token.functions.totalSupply().call() == head - deploy_block
            for n in range(max(1, head - 20), head + 1):  # the last blocks read whole, receipts included
                block = chain.w3.eth.get_block(n, full_transactions=True)
                assert len(block["transactions"]) == 1
                assert chain.receipt("0x" + bytes(block["transactions"][0]["hash"]).hex(), timeout=0)["status"] == 1
        finally:
            chain.close()


# ------------------------------------------------------------------ the worker on the chain on disk


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_killed_at_each_worker_step_resumes_on_the_reopened_chain(pool, pg_dsn, artifacts, tmp_path, point):
    d = tmp_path / "chain"
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    workers = []
    try:
        hits: list[str] = []

        def fault(p):
            if p == point:
                hits.append(p)
                if len(hits) == 2:  # killed at the second batch through this step (the first went by)
                    raise Crash(p)

        w1 = make_worker(pool, market, chain, fault=fault)
        workers.append(w1)
        await w1.start()
        await register_and_fund(market, w1, chain)
        n1 = await trade(market, 25, seed=21)
        with pytest.raises(Crash):
            await w1.drain()
        before = await anchored_proofs(pool, chain)
        collateral = {a.address: market.engine.accounts[a.address].collateral for a in MEMBER_KEYS}
        # the exchange process dies: the worker, the engine, the chain with what it had not committed
        w1.close()
        chain.store.abandon()
        await market.close()

        market = await open_test_market(pg_dsn, "s")  # recovered from the journal
        assert {a.address: market.engine.accounts[a.address].collateral for a in MEMBER_KEYS} == collateral
        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        w2 = make_worker(pool, market, chain)
        workers.append(w2)
        await w2.start()
        assert w2.deployment_id == w1.deployment_id  # the same contracts: found, not redeployed
        for p in before:  # proofs of batches anchored before the kill verify on the reopened chain
            assert verify_proof(p, chain.registry), p["trade"]["trade_id"]
        await w2.drain()
        await assert_settled(pool, market, chain)
        n2 = await trade(market, 10, seed=22)  # trading goes on, and settles
        await w2.drain()
        await assert_settled(pool, market, chain)
        rep = await reconcile(pool, "s", chain)
        assert rep.trades == n1 + n2
        assert all(verify_proof(p, chain.registry) for p in await anchored_proofs(pool, chain))
    finally:
        for w in workers:
            w.close()
        chain.close()
        await market.close()


async def test_a_chain_that_lost_its_last_blocks_is_healed(pool, pg_dsn, artifacts, tmp_path):
    """The chain directory goes back to an older copy (a restored backup, a disk that lost
    its last writes): the batches anchored since are missing from the registry. The worker
    notices at start, re-sends their stored transactions in nonce order, and everything
    reconciles with collateral equal to the chain's."""
    d, older = tmp_path / "chain", tmp_path / "chain-older"
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        w1 = await funded_worker(pool, market, chain)
        await trade(market, 20, seed=31)
        await w1.drain()
        kept = chain.registry.functions.batchCount().call()
        await w1.shutdown()
        chain.close()
        shutil.copytree(d, older)

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        w2 = make_worker(pool, market, chain)
        await w2.start()
        await trade(market, 20, seed=32)
        await w2.drain()
        await assert_settled(pool, market, chain)
        total = chain.registry.functions.batchCount().call()
        assert total > kept
        proofs = await anchored_proofs(pool, chain)
        addresses = (chain.token.address, chain.registry.address)
        await w2.shutdown()
        chain.close()
        shutil.rmtree(d)
        shutil.copytree(older, d)  # the last blocks are gone

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        chain.attach(*addresses)
        assert chain.registry.functions.batchCount().call() == kept
        w3 = make_worker(pool, market, chain)
        await w3.start()  # the check at start finds the batches missing on chain
        assert w3.stats["rollbacks"] >= 1 and w3.stats["batches_healed"] == total - kept
        assert "rollback" in w3.alerts
        await w3.drain()
        await assert_settled(pool, market, chain)
        assert chain.registry.functions.batchCount().call() == total and "rollback" not in w3.alerts
        assert all(verify_proof(p, chain.registry) for p in proofs)
        await w3.shutdown()
    finally:
        chain.close()
        await market.close()


async def test_a_lost_chain_directory_is_refused_until_the_operator_approves(pool, pg_dsn, artifacts, tmp_path):
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=tmp_path / "chain")
    try:
        w1 = await funded_worker(pool, market, chain)
        await trade(market, 10, seed=41)
        await w1.drain()
        await w1.shutdown()
        chain.close()

        chain = Chain.in_process(artifacts=artifacts, data_dir=tmp_path / "elsewhere")  # an empty directory
        w2 = make_worker(pool, market, chain)
        with pytest.raises(SettlementStartError, match="VOLTBOURSE_CHAIN_DATA_DIR") as exc:
            await w2.start()
        assert "redeploy --yes" in str(exc.value) and str(tmp_path / "elsewhere") in str(exc.value)
        await approve_redeploy(pool, "s", chain)
        w3 = make_worker(pool, market, chain)
        await w3.start()
        assert w3.deployment_id != w1.deployment_id
        assert all(market.engine.accounts[k.address].collateral == 0 for k in MEMBER_KEYS)
        await w2.shutdown()
        await w3.shutdown()
    finally:
        chain.close()
        await market.close()



async def test_the_in_process_chain_has_the_signing_domains_chain_id(pool, pg_dsn, artifacts, tmp_path):
    """In memory and on disk the chain takes the signing domain's id (eth_chainId, signed
    transactions, the worker's start check); a store keeps the id it was created with, and a
    store created under eth-tester's fixed id is refused with what to do when orders are
    signed for another."""
    mem = Chain.in_process(artifacts=artifacts, chain_id=4242)
    assert mem.chain_id == mem.w3.eth.chain_id == 4242
    mem.deploy()  # signed transactions with chain id 4242 are accepted
    d = tmp_path / "chain"
    disk = Chain.in_process(artifacts=artifacts, data_dir=d, chain_id=1337)
    disk.deploy()
    disk.close()
    again = Chain.in_process(artifacts=artifacts, data_dir=d, chain_id=999)  # the store's id wins
    assert again.chain_id == again.w3.eth.chain_id == 1337
    again.close()
    # a store from before the chain took the signing domain's id: none recorded -> eth-tester's
    legacy = Chain.in_process(artifacts=artifacts, data_dir=tmp_path / "old", chain_id=1337)
    del legacy.store[CHAIN_ID_KEY]
    legacy.store.commit()
    legacy.close()
    legacy = Chain.in_process(artifacts=artifacts, data_dir=tmp_path / "old", chain_id=1337)
    market = await open_test_market(pg_dsn, "cid")
    try:
        assert legacy.chain_id == TESTER_CHAIN_ID
        w = make_worker(pool, market, legacy, signing_chain_id=1337)
        with pytest.raises(SettlementStartError, match=f"VOLTBOURSE_CHAIN_ID={TESTER_CHAIN_ID}"):
            await w.start()
        await w.shutdown()
        ok = make_worker(pool, market, legacy, signing_chain_id=TESTER_CHAIN_ID)
        await ok.start()
        await ok.shutdown()
    finally:
        legacy.close()
        await market.close()
