"""Compaction of the in-process chain's store (settlement.chainstore.compact, ``voltbourse
settlement compact-chain``): after it the chain reopens at the same head with the same
genesis, state, nonces and code, keeps its recent blocks whole, drops older ones (their
receipts and logs), and goes on; proofs of batches anchored before it still verify and
reconcile is OK; the file is much smaller; a crash at any moment of it leaves the old
store or the new one, each usable; it refuses while the store is open; the settlement
process compacts a grown store when it opens it.

Real parts only: real PostgreSQL, the real runtime, py-evm over SQLite files in tmp_path,
the contracts compiled from source."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.market import open_test_market
from support.paths import ROOT
from support.settlement import (
    MEMBER_KEYS,
    anchored_proofs,
    assert_settled,
    funded_worker,
    make_worker,
    trade,
)

from exchange.runtime.config import load_settings
from settlement.chain import Chain
from settlement.chainstore import DB_FILE, MIN_KEEP_BLOCKS, ChainStoreLocked, compact, droppable_blocks
from settlement.process import SettleProcess
from settlement.proofs import verify_proof
from settlement.reconcile import reconcile
from settlement.worker import compact_chain_at_open, compaction_floor, unsettled

pytestmark = pytest.mark.integration

HOLDER = "0x000000000000000000000000000000000000b0b1"
KEEP = MIN_KEEP_BLOCKS


class Crash(BaseException):
    """Raised by a hook: the process 'dies' there."""


def _grow(chain: Chain, blocks: int) -> None:
    for _ in range(blocks):
        chain.mint(HOLDER, 1)


def _state(chain: Chain) -> dict:
    """What must survive a compaction: head, genesis, chain id, nonces, balances, code, storage."""
    w3 = chain.w3
    head = w3.eth.get_block("latest")
    faucet = w3.eth.accounts[-1]
    return {
        "head": head["number"], "head_hash": bytes(head["hash"]), "genesis": chain.genesis_hash,
        "chain_id": chain.chain_id,
        "nonces": (chain.pending_nonce(), w3.eth.get_transaction_count(faucet)),
        "eth": (w3.eth.get_balance(chain.operator.address), w3.eth.get_balance(faucet)),
        "code": (bytes(w3.eth.get_code(chain.token.address)), bytes(w3.eth.get_code(chain.registry.address))),
        "vEUR": (chain.token.functions.balanceOf(HOLDER).call(), chain.token.functions.totalSupply().call()),
        "batches": chain.registry.functions.batchCount().call(),
        "collateral": tuple(chain.collateral(a.address) for a in MEMBER_KEYS),
    }


def _rows(directory: Path) -> list[tuple[bytes, bytes]]:
    conn = sqlite3.connect(directory / DB_FILE)
    try:
        return sorted((bytes(k), bytes(v)) for k, v in conn.execute("SELECT k, v FROM kv"))
    finally:
        conn.close()


def _tx(receipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


# ------------------------------------------------------------------ the store


def test_compaction_keeps_the_head_state_and_recent_blocks(tmp_path, artifacts):
    d = tmp_path / "chain"
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    dep = c.deploy()
    old = c.mint(HOLDER, 5)
    _grow(c, 3 * KEEP)
    recent = c.mint(HOLDER, 7)
    before = _state(c)
    c.close()

    done = compact(d, KEEP)
    assert done.head == before["head"] and done.history_start == done.head - KEEP + 1
    assert done.bytes_after * 4 < done.bytes_before, done  # most of it was old state
    assert sorted(p.name for p in d.iterdir()) == ["LOCK", DB_FILE]  # no temp file, no stale log

    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        c.attach(dep.token, dep.registry)
        assert _state(c) == before
        assert c.history_start() == done.history_start
        assert c.w3.eth.get_block(0)["hash"].hex() == before["genesis"].removeprefix("0x")
        # an old block's receipt went with it; the recent ones are all there, found by hash
        assert c.receipt(_tx(old), timeout=0) is None
        r = c.receipt(_tx(recent), timeout=0)
        assert r is not None and r["status"] == 1 and r["blockNumber"] == recent["blockNumber"]
        for n in range(done.history_start, done.head + 1, 37):
            block = c.w3.eth.get_block(n, full_transactions=True)
            assert c.receipt("0x" + bytes(block["transactions"][0]["hash"]).hex(), timeout=0)["status"] == 1
        # log queries over dropped blocks read what is left
        assert c.registry_logs(("Deposited", "WithdrawalRequested"), 0, done.head) == {
            "Deposited": [], "WithdrawalRequested": []}
        # the chain goes on, and compacts again
        assert c.mint(HOLDER, 1)["blockNumber"] == done.head + 1
        assert c.token.functions.balanceOf(HOLDER).call() == before["vEUR"][0] + 1
    finally:
        c.close()
    again = compact(d, KEEP)
    assert (again.head, again.history_start) == (done.head + 1, done.history_start + 1)
    # keep_from (a block a caller still needs) keeps more, but never what is gone already
    assert compact(d, KEEP, keep_from=1).history_start == done.history_start + 1


def test_compaction_refuses_while_the_store_is_open(tmp_path, artifacts):
    d = tmp_path / "chain"
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        c.deploy()
        with pytest.raises(ChainStoreLocked, match="in use by another process"):
            compact(d)
        assert c.mint(HOLDER, 1)["status"] == 1  # untouched, still usable
    finally:
        c.close()
    with pytest.raises(ValueError, match="at least 256"):
        compact(d, 10)
    with pytest.raises(FileNotFoundError):
        compact(tmp_path / "nothing")
    compact(d)  # closed: fine (nothing old enough to drop)
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    c.close()


def test_a_failure_before_the_rename_leaves_the_old_store(tmp_path, artifacts):
    d = tmp_path / "chain"
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    dep = c.deploy()
    old = c.mint(HOLDER, 5)
    _grow(c, KEEP + 40)
    before = _state(c)
    c.close()
    rows = _rows(d)

    def crash(new_file: Path) -> None:
        assert new_file.is_file() and new_file.parent == d
        raise Crash("before the rename")

    with pytest.raises(Crash):
        compact(d, KEEP, before_replace=crash)
    assert _rows(d) == rows  # the old store, whole
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        c.attach(dep.token, dep.registry)
        assert _state(c) == before and c.history_start() == 0
        assert c.receipt(_tx(old), timeout=0) is not None
    finally:
        c.close()
    done = compact(d, KEEP)  # the next compaction removes what the crashed one left
    assert done.history_start == before["head"] - KEEP + 1
    assert sorted(p.name for p in d.iterdir()) == ["LOCK", DB_FILE]


CHILD = """
import sys
from pathlib import Path
from settlement.chainstore import compact
print("ready", flush=True)
sys.stdin.readline()
compact(Path(sys.argv[1]), int(sys.argv[2]))
print("done", flush=True)
"""


def test_a_compaction_killed_at_any_moment_leaves_a_usable_store(tmp_path, artifacts):
    """SIGKILL at 7 spread-out moments of a compaction, then one let run to its end: the
    store reopens with the same state each time, either as it was (every block) or compacted."""
    d = tmp_path / "chain"
    c = Chain.in_process(artifacts=artifacts, data_dir=d)
    dep = c.deploy()
    _grow(c, KEEP + 300)
    before = _state(c)
    c.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # how long one takes here (on a copy), to spread the kills over it
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / DB_FILE).write_bytes((d / DB_FILE).read_bytes())
    t = compact(probe, KEEP).seconds
    outcomes = set()
    for i in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(KEEP + 100 - 10 * i)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        if i < 7:
            time.sleep(t * 1.3 * i / 7)
            child.send_signal(signal.SIGKILL)
        else:  # the last one finishes (however slow the machine): a compacted store must come out
            assert child.stdout.readline().strip() == "done"
        child.wait()
        c = Chain.in_process(artifacts=artifacts, data_dir=d)
        try:
            c.attach(dep.token, dep.registry)
            assert _state(c) == before, i
            outcomes.add(c.history_start() > 0)
        finally:
            c.close()
    c = Chain.in_process(artifacts=artifacts, data_dir=d)  # and it goes on
    try:
        c.attach(dep.token, dep.registry)
        assert c.mint(HOLDER, 1)["blockNumber"] == before["head"] + 1
    finally:
        c.close()
    assert True in outcomes  # the last round compacted to the end


# ------------------------------------------------------------------ the worker on a compacted chain


async def test_settlement_goes_on_after_a_compaction(pool, pg_dsn, artifacts, tmp_path):
    d = tmp_path / "chain"
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        w1 = await funded_worker(pool, market, chain)
        n1 = await trade(market, 25, seed=41)
        await w1.drain()
        await assert_settled(pool, market, chain)
        before = await anchored_proofs(pool, chain)
        anchored_at = await pool.fetchval("SELECT max(block_number) FROM settlement_batches WHERE market_id = 's'")
        await w1._chain(_grow, chain, KEEP + 50)  # the batches' blocks fall out of the recent window
        await w1.scan_chain()  # the cursor moves on (compaction keeps its rescan window)
        state = _state(chain)
        await w1.shutdown()
        chain.close()

        floor = await compaction_floor(pool, "s")
        done = compact(d, KEEP, keep_from=floor)
        assert anchored_at < done.history_start <= floor
        assert done.bytes_after * 2 < done.bytes_before

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        w2 = make_worker(pool, market, chain)
        await w2.start()  # finds the deployment, checks the registry against the database
        assert w2.deployment_id == w1.deployment_id and not w2.alerts
        assert _state(chain) == state
        for p in before:  # proofs of batches anchored before the compaction verify
            assert verify_proof(p, chain.registry), p["trade"]["trade_id"]
        assert await anchored_proofs(pool, chain) == before
        rep = await reconcile(pool, "s", chain)
        assert rep.ok, rep.differences
        assert rep.compacted == rep.anchored > 0  # their receipts are gone: checked by their roots
        n2 = await trade(market, 15, seed=42)  # trading and anchoring go on
        await w2.drain()
        await assert_settled(pool, market, chain)
        rep = await reconcile(pool, "s", chain)
        assert rep.trades == n1 + n2 and 0 < rep.compacted < rep.anchored
        assert all(verify_proof(p, chain.registry) for p in await anchored_proofs(pool, chain))
        await w2.shutdown()
    finally:
        chain.close()
        await market.close()


async def test_a_sent_batch_whose_block_was_compacted_away_is_anchored_not_lost(pool, pg_dsn, artifacts, tmp_path):
    """The worker dies right after sending a batch (recorded ``sent``); its block is mined,
    then compacted away before the worker looks for the receipt. The receipt is gone, the
    registry has the batch: it is recorded as anchored, not re-sent nor signed anew."""
    d = tmp_path / "chain"
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        hits: list[str] = []

        def fault(p):
            if p == "after_send":
                hits.append(p)
                if len(hits) == 2:
                    raise Crash(p)

        w1 = await funded_worker(pool, market, chain, fault=fault)
        await trade(market, 25, seed=51)
        with pytest.raises(Crash):
            await w1.drain()
        sent = await pool.fetchrow("SELECT batch_id, tx_hash FROM settlement_batches WHERE market_id = 's' "
                                   "AND state = 'sent'")
        assert sent is not None and chain.receipt(sent["tx_hash"], timeout=0) is not None  # mined
        _grow(chain, KEEP + 20)
        await w1.scan_chain()
        w1.close()
        chain.close()
        nonce = None
        compact(d, KEEP, keep_from=await compaction_floor(pool, "s"))

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        assert chain.receipt(sent["tx_hash"], timeout=0) is None  # compacted away
        nonce = chain.pending_nonce()
        w2 = make_worker(pool, market, chain)
        await w2.start()
        await w2.drain()
        row = await pool.fetchrow("SELECT state, tx_hash, attempts FROM settlement_batches WHERE market_id = 's' "
                                  "AND batch_id = $1", sent["batch_id"])
        assert (row["state"], row["tx_hash"], row["attempts"]) == ("anchored", sent["tx_hash"], 1)
        await assert_settled(pool, market, chain)
        rep = await reconcile(pool, "s", chain)
        assert rep.ok and rep.compacted >= 1
        assert chain.pending_nonce() >= nonce
        await w2.shutdown()
    finally:
        chain.close()
        await market.close()


async def test_compaction_when_the_settlement_process_opens_a_grown_store_and_by_command(pool, pg_dsn, artifacts,
                                                                                       tmp_path):
    d = tmp_path / "chain"
    settings = load_settings(database_url=pg_dsn, market_id="s", chain_data_dir=str(d))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOLTBOURSE_DATABASE_URL": pg_dsn, "VOLTBOURSE_MARKET_ID": "s",
           "VOLTBOURSE_CHAIN_DATA_DIR": str(d)}
    command = [sys.executable, "-m", "exchange.tools.cli", "settlement", "compact-chain", "--keep-blocks", str(KEEP),
               "--json"]
    market = await open_test_market(pg_dsn, "s")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        w = await funded_worker(pool, market, chain)
        await w._chain(_grow, chain, KEEP + 100)
        await w.scan_chain()
        head = chain.w3.eth.block_number
        # in use: the open after it reports that; the command says to stop the exchange
        assert await compact_chain_at_open(pool, settings, threshold=1, keep_blocks=KEEP) is None
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "in use: stop the exchange" in refused.stderr, refused.stderr
        await w.shutdown()
        chain.close()

        assert await compact_chain_at_open(pool, settings, keep_blocks=KEEP) is None  # not grown enough
        done = await compact_chain_at_open(pool, settings, threshold=50, keep_blocks=KEEP)
        assert done is not None and done.head == head and done.history_start == head - KEEP + 1
        assert await compact_chain_at_open(pool, settings, threshold=1, keep_blocks=KEEP) is None  # nothing to drop

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        w = make_worker(pool, market, chain)
        await w.start()
        await w._chain(_grow, chain, 30)
        await w.scan_chain()
        await w.shutdown()
        chain.close()
        ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        report = json.loads(ran.stdout)
        assert (report["head"], report["history_start"]) == (head + 30, head + 30 - KEEP + 1)
        assert report["directory"] == str(d)
        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        w = make_worker(pool, market, chain)
        await w.start()
        await trade(market, 10, seed=61)
        await w.drain()
        await assert_settled(pool, market, chain)
        await w.shutdown()
    finally:
        chain.close()
        await market.close()


async def _settled_in_time(pool, market, chain, seconds: float = 30.0) -> None:
    """assert_settled, once the engine inbox applied the settlement process's last updates."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await assert_settled(pool, market, chain)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_settlement_process_compacts_its_chain_while_it_runs(pool, pg_dsn, artifacts, tmp_path):
    """A settlement process that never restarts still compacts: when its store grew by the
    threshold, it closes the chain between two batches, compacts it and opens it again, and
    settlement goes on (every trade anchored, reconcile OK, collateral equal, proofs from
    before and after verifying)."""
    d = tmp_path / "chain"
    threshold = 80  # past the blocks of the batches anchored before: their receipts go
    market = await open_test_market(pg_dsn, "s")
    market.start_inbox()
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    try:
        w = await funded_worker(pool, market, chain)
        await trade(market, 20, seed=71)
        await w.drain()
        head = chain.w3.eth.block_number
        await w._chain(_grow, chain, KEEP + threshold - 6 - head)  # six blocks short of the threshold
        await w.scan_chain()
        await w.shutdown()
        chain.close()
        assert droppable_blocks(d, KEEP) == threshold - 6

        settings = load_settings(database_url=pg_dsn, market_id="s", chain_data_dir=str(d), settlement_batch_size=7,
                                 settlement_max_age_s=0.2, settlement_poll_s=0.05)
        proc = SettleProcess(settings, pg_dsn, compact_threshold=threshold, compact_check_s=0.2, keep_blocks=KEEP)
        stop = asyncio.Event()
        running = asyncio.create_task(proc.run(stop))
        try:
            deadline = time.monotonic() + 120
            seed = 72
            while proc.compactions == 0:  # each batch anchored is a block more
                assert time.monotonic() < deadline, "no compaction while running"
                assert not running.done(), running.result()
                await trade(market, 4, seed=seed)
                seed += 1
                await asyncio.sleep(0.3)
            await trade(market, 15, seed=99)  # after the compaction: settled by the reopened chain
            while await unsettled(pool, "s"):
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            assert await asyncio.wait_for(running, 30) == 0
        assert droppable_blocks(d, KEEP) < threshold

        chain = Chain.in_process(artifacts=artifacts, data_dir=d)
        assert chain.history_start() > 1
        w = make_worker(pool, market, chain)
        await w.start()  # finds its deployment on the compacted chain
        assert not w.alerts
        await w.shutdown()
        await _settled_in_time(pool, market, chain)
        rep = await reconcile(pool, "s", chain)
        assert rep.ok and 0 < rep.compacted < rep.anchored, rep.as_dict()
        proofs = await anchored_proofs(pool, chain)
        assert proofs and all(verify_proof(p, chain.registry) for p in proofs)
    finally:
        chain.close()
        await market.close()
