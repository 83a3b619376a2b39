"""The peer message ``my_collateral`` over a real WebSocket: with settlement on (in-process
EVM, the real worker), a member's collateral read from the registry, the engine's view of it
(collateral, open exposure, unsettled payable, free to trade), its deposits as the chain scan
recorded them and its withdrawal requests with their state; never another member's; and
``UNAVAILABLE`` when the exchange runs without settlement."""

from __future__ import annotations

import json

import aiohttp
import pytest
from support.keys import KEYS
from support.server import member
from support.waiting import until as _until
from support.wsclient import peer

from settlement.collateral import record_deposits
from settlement.plugin import SETTLEMENT

pytestmark = pytest.mark.integration

A, B, C = KEYS[:3]
SETTLED = {"settlement_enabled": True, "settlement_process": "inline", "settlement_poll_s": 0.05,
           # nothing is anchored during the test: the trades stay unsettled (net payable)
           "settlement_batch_size": 10_000, "settlement_max_age_s": 3600,
           "members": [member(k, collateral=None) for k in KEYS[:3]], "via": "runtime"}


def mentions(obj, address: str) -> bool:
    return address.lower() in json.dumps(obj).lower()


@pytest.mark.server(market_id="mycoll", **SETTLED)
async def test_my_collateral_is_the_chains_and_the_engines(server, pool):
    worker = server.app[SETTLEMENT]
    chain = worker.chain
    engine = server.market.engine
    await worker._chain(chain.fund_member, A, 10**13)
    await worker._chain(chain.fund_member, B, 3 * 10**13)
    await worker._chain(chain.fund_member, C, 10**13)
    worker.wake()
    await _until(lambda: _true(engine.accounts[A.address].collateral == 10**13
                               and engine.accounts[B.address].collateral == 3 * 10**13))
    pid = server.open_products[0]
    await server.place(1, "sell", 9_000, 1_000, pid)
    await server.place(0, "buy", 9_000, 1_000, pid)  # a trade: A owes 9000 x 1000 units, not settled yet
    await server.place(0, "buy", 8_000, 2_000, pid)  # resting: 16 000 000 units of open exposure

    async with aiohttp.ClientSession() as http:
        a = await peer(http, server, 0)
        r = await a.request({"type": "my_collateral"})
        assert r["type"] == "response", r
        got = r["result"]
        acct = engine.accounts[A.address]
        on_chain = await worker._chain(chain.collateral, A.address)
        assert got["member"] == A.address
        assert got["chain"]["collateral"] == str(on_chain) == str(10**13)
        assert got["chain"]["registry"] == chain.registry.address and got["chain"]["chain_id"] == chain.chain_id
        assert got["engine"] == {
            "collateral": str(acct.collateral), "open_exposure": str(acct.open_exposure),
            "net_payable": str(acct.net_payable),
            "free": str(acct.collateral - acct.open_exposure - max(acct.net_payable, 0))}
        assert (acct.open_exposure, acct.net_payable) == (8_000 * 2_000, 9_000 * 1_000)
        assert [(d["amount"], d["collateral_after"]) for d in got["deposits"]] == [(str(10**13), str(10**13))]
        assert got["deposits"][0]["tx_hash"].startswith("0x") and got["deposits"][0]["block"] <= got["chain"]["block"]
        assert got["withdrawals"] == [] and got["withdrawals_pending"] == "0"
        # money is never a JSON number
        assert all(isinstance(v, str) for v in got["engine"].values())

        # a second deposit and a withdrawal request: newest first, the request's state as the worker decided it
        await worker._chain(chain.fund_member, A, 5 * 10**12)
        reg = chain.registry
        await worker._chain(chain.member_transact, A, reg.functions.requestWithdrawal(10**12))
        worker.wake()

        async def decided() -> bool:
            st = await pool.fetchval("SELECT state FROM settlement_withdrawals WHERE request_id = 1")
            return st == "executed"
        await _until(decided)
        got = (await a.request({"type": "my_collateral"}))["result"]
        on_chain = await worker._chain(chain.collateral, A.address)
        assert got["chain"]["collateral"] == str(on_chain) == str(10**13 + 5 * 10**12 - 10**12)
        assert [(d["amount"], d["collateral_after"]) for d in got["deposits"]] == [
            (str(5 * 10**12), str(15 * 10**12)), (str(10**13), str(10**13))]
        assert [(w["request_id"], w["amount"], w["state"]) for w in got["withdrawals"]] == [(1, str(10**12), "executed")]
        assert all(d["seen_at"].endswith("Z") for d in got["deposits"]) and got["withdrawals"][0]["updated_at"].endswith("Z")
        assert got["engine"]["collateral"] == str(engine.accounts[A.address].collateral) == str(14 * 10**12)
        r = await a.request({"type": "my_collateral", "limit": 1})
        assert [d["amount"] for d in r["result"]["deposits"]] == [str(5 * 10**12)]

        # never another member's: A's answer names only A, and no field asks for someone else
        assert not mentions(got, B.address) and not mentions(got, C.address)
        for field in ("member", "address"):
            r = await a.request({"type": "my_collateral", field: B.address})
            assert r["type"] == "error" and r["code"] == "INVALID_MESSAGE", r
        for bad in (0, 101, "20"):
            r = await a.request({"type": "my_collateral", "limit": bad})
            assert r["type"] == "error" and r["code"] == "INVALID_MESSAGE", r
        b = await peer(http, server, 1)
        got_b = (await b.request({"type": "my_collateral"}))["result"]
        assert got_b["member"] == B.address and got_b["chain"]["collateral"] == str(3 * 10**13)
        assert got_b["withdrawals"] == [] and len(got_b["deposits"]) == 1 and not mentions(got_b, A.address)
        assert got_b["engine"]["net_payable"] == str(-9_000 * 1_000)

        # a rescan from a block replaces what was recorded at and above it (here: the chain has nothing)
        newest = got["deposits"][0]["block"]
        await record_deposits(pool, worker.market_id, worker.deployment_id, newest, [])
        got = (await a.request({"type": "my_collateral"}))["result"]
        assert [d["amount"] for d in got["deposits"]] == [str(10**13)]
        await a.ws.close()
        await b.ws.close()


@pytest.mark.server(market_id="mycoll-off", members=KEYS[:2])
async def test_without_settlement_my_collateral_is_unavailable(server):
    async with aiohttp.ClientSession() as http:
        a = await peer(http, server, 0)
        r = await a.request({"type": "my_collateral"})
        assert r["type"] == "error" and r["code"] == "UNAVAILABLE", r
        await a.ws.close()


async def _true(x):
    return x
