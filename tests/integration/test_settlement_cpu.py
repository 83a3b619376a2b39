"""What keeps the settlement process's CPU per trade down gives the same answers as before.

- Members' collateral after a batch without an eth_call per member (settlement.collateral.
  ChainCollateral): learnt from our own anchorBatch receipts (NetSettled carries the collateral
  after it), used only while the chain's head is the block it was learnt at, and always equal
  to what the registry answers there.
- One eth_getLogs for several events of the registry (Chain.registry_logs) finds what one
  query per event finds.

Real in-process EVM, real PostgreSQL and runtime."""

from __future__ import annotations

import pytest
from support.keys import KEYS
from support.market import open_test_market
from support.settlement import DEPOSIT, MEMBER_KEYS, funded_worker, trade

from settlement.collateral import ChainCollateral

pytestmark = pytest.mark.integration


def _anchor(chain, batch_id: int, nets: list[tuple[str, int]]):
    call, gas = chain.anchor_call(batch_id, batch_id.to_bytes(32, "big"), 1, batch_id, batch_id, nets)
    return chain.transact(call, gas)


def _exact(chain, known: ChainCollateral, members: list[str]) -> dict[str, int]:
    values = known.at_head(members)
    assert values == {m: chain.collateral(m) for m in members}
    return values


def test_learnt_from_receipts_read_only_when_the_head_moved(chain):
    chain.deploy()
    a, b, c, d = (k.address for k in KEYS[:4])
    for k in KEYS[:4]:
        chain.fund_member(k, DEPOSIT)
    known = ChainCollateral(chain)
    _exact(chain, known, [a, b, c, d])
    assert known.reads == 4
    # a batch on top of the known block: its members from NetSettled, the others carried over
    known.learn_receipt(_anchor(chain, 1, [(a, -500), (b, 500)]))
    _exact(chain, known, [a, b, c, d])
    known.learn_receipt(_anchor(chain, 2, [(c, -7), (a, 7)]))
    values = _exact(chain, known, [a, b, c, d])
    assert known.reads == 4
    assert values[a] == DEPOSIT - 493 and values[b] == DEPOSIT + 500 and values[c] == DEPOSIT - 7
    # someone else's transaction (a deposit) moves the head: everything is read again
    chain.fund_member(KEYS[3], 1_000)
    _exact(chain, known, [a, d])
    assert known.reads == 6
    # a batch whose block does not follow the known one: only its own members are known
    known.forget()
    known.learn_receipt(_anchor(chain, 3, [(b, -1), (d, 1)]))
    _exact(chain, known, [b, d])
    assert known.reads == 6
    _exact(chain, known, [a, c])
    assert known.reads == 8
    # a receipt learnt late (the head is past its block) is never used
    late = _anchor(chain, 4, [(a, -2), (b, 2)])
    _anchor(chain, 5, [(a, -3), (c, 3)])
    known.learn_receipt(late)
    _exact(chain, known, [a, b])
    assert known.reads == 10


def test_a_member_spelled_otherwise_is_the_same_member(chain):
    chain.deploy()
    a, b = (k.address for k in KEYS[:2])
    for k in KEYS[:2]:
        chain.fund_member(k, DEPOSIT)
    known = ChainCollateral(chain)
    known.at_head([a, b])
    known.learn_receipt(_anchor(chain, 1, [(a, -9), (b, 9)]))
    assert known.at_head([a.lower()]) == {a.lower(): DEPOSIT - 9}
    assert known.reads == 2


async def test_worker_reads_no_collateral_per_batch_and_engine_equals_chain(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    try:
        worker = await funded_worker(pool, market, chain)
        reads = worker.known.reads
        n = await trade(market, 60)
        await worker.drain()
        batches = await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE state = 'anchored' "
                                      "AND collateral_applied")
        assert batches >= 5 and n > 0
        assert worker.known.reads == reads  # every batch's collateral came from its own receipt
        for acct in MEMBER_KEYS:
            a = market.engine.accounts[acct.address]
            assert a.collateral == chain.collateral(acct.address) and a.net_payable == 0
        # a deposit made between a batch's anchoring and its collateral: read, not taken from the receipt
        n = await trade(market, 14, seed=2)
        await worker.ingest()
        assert await worker.form_batch(force=True)
        assert await worker.send_pending()
        assert await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE state = 'anchored' "
                                   "AND NOT collateral_applied") == 1
        await worker._chain(chain.fund_member, MEMBER_KEYS[0], 12_345)
        await worker.drain()
        assert worker.known.reads > reads
        for acct in MEMBER_KEYS:
            a = market.engine.accounts[acct.address]
            assert a.collateral == chain.collateral(acct.address) and a.net_payable == 0
        assert sum(chain.collateral(a.address) for a in MEMBER_KEYS) == DEPOSIT * len(MEMBER_KEYS) + 12_345
    finally:
        worker.close()
        await market.close()


def test_one_log_query_for_several_events_finds_what_one_per_event_finds(chain):
    chain.deploy()
    members = KEYS[:4]
    for k in members:
        chain.fund_member(k, DEPOSIT)
    _anchor(chain, 1, [(members[0].address, -10), (members[1].address, 10)])
    chain.member_transact(members[2], chain.registry.functions.requestWithdrawal(5))
    chain.fund_member(members[3], 7)
    chain.member_transact(members[3], chain.registry.functions.requestWithdrawal(6))
    head = chain.w3.eth.block_number
    names = ("Deposited", "WithdrawalRequested", "NetSettled")
    found = chain.registry_logs(names, 0, head)
    for name in names:
        assert found[name] == list(getattr(chain.registry.events, name)().get_logs(from_block=0, to_block=head))
    assert [len(found[n]) for n in names] == [5, 2, 2]
    assert chain.registry_logs(("Deposited",), head, head) == {"Deposited": []}
