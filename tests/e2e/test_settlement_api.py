"""Settlement inside the running exchange: a real server (PostgreSQL, runtime, in-process
EVM with the contracts compiled from source), peers over real WebSockets. Deposits
on chain become collateral, trades settle by themselves, members fetch proofs over
WebSocket and REST and check them against the chain; the operator sees the status
and runs the reconciliation."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from support import keys
from support.keys import AUTH, OUTSIDER
from support.server import member
from support.wsclient import WSClient

from exchange.protocol.auth import sign_login
from settlement.plugin import SETTLEMENT, proof_message
from settlement.proofs import verify_proof
from settlement.worker import BATCH_OF_TRADE

pytestmark = pytest.mark.e2e

KEYS = keys.KEYS[:3]  # the members (collateral on chain)
DEPOSIT = 10**13


async def _until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_deposits_trades_settle_and_members_prove_them(serve, pool):
    async with serve(market_id="sa", members=[member(k, collateral=None) for k in KEYS], settlement_enabled=True, settlement_process="inline",
                     settlement_batch_size=4, settlement_max_age_s=0.2, settlement_poll_s=0.05) as server, \
            aiohttp.ClientSession() as http:
        market = server.market
        worker = server.app[SETTLEMENT]
        chain = worker.chain
        base, url = server.http, server.url
        pid = server.open_products[0]
        # without a deposit, a buy has no collateral behind it
        buyer = await WSClient.connect(http, url, KEYS[0].key)
        await buyer.login()
        r = await buyer.request({"type": "place", "product_id": pid, "side": "buy", "price": 10_000, "quantity": 1000})
        assert r["type"] == "error" and r["code"] == "INSUFFICIENT_COLLATERAL", r
        # deposits seen on chain raise the collateral the engine checks
        for k in KEYS:
            await worker._chain(chain.fund_member, k, DEPOSIT)
        worker.wake()
        await _until(lambda: _true(all(market.engine.accounts[k.address].collateral == DEPOSIT for k in KEYS)))
        seller = await WSClient.connect(http, url, KEYS[1].key)
        await seller.login()
        for i in range(6):
            r = await seller.request({"type": "place", "product_id": pid, "side": "sell", "price": 9_000 + i,
                                      "quantity": 1000 + i})
            assert r["type"] == "response", r
            r = await buyer.request({"type": "place", "product_id": pid, "side": "buy", "price": 9_000 + i,
                                     "quantity": 1000 + i})
            assert r["type"] == "response", r
        await _until(lambda: _settled(pool, 6))
        # WebSocket proof of the buyer's own trade, checked against the chain
        r = await buyer.request({"type": "trade_proof", "trade_id": 5})
        assert r["type"] == "response", r
        proof = r["result"]
        assert proof["batch_id"] == 2 and proof["registry"] == chain.registry.address
        assert verify_proof(proof, chain.registry)
        # the SDK helper: fetch over WebSocket, check against the chain
        from clients.sdk.client import VoltbourseClient
        from clients.sdk.proofs import fetch_proof, verify_offline, verify_on_chain

        async with VoltbourseClient(url, KEYS[0].key) as sdk:
            sp = await fetch_proof(sdk, 5)
        assert sp["root"] == proof["root"] and verify_offline(sp) and verify_on_chain(sp, chain.registry)
        assert verify_on_chain(sp, chain.w3)  # registry looked up from the proof, ABI compiled from source
        # a third member may not fetch it
        other = await WSClient.connect(http, url, KEYS[2].key)
        await other.login()
        r = await other.request({"type": "trade_proof", "trade_id": 5})
        assert r["type"] == "error" and r["code"] == "NOT_FOUND"
        # REST, signed by the member
        ts = int(time.time())
        sig = sign_login(proof_message("sa", 5, ts), KEYS[1].key)
        async with http.get(f"{base}/api/trades/5/proof", params={"address": KEYS[1].address, "ts": str(ts),
                                                                  "sig": sig}) as resp:
            assert resp.status == 200
            assert (await resp.json())["root"] == proof["root"]
        bad = sign_login(proof_message("sa", 5, ts), KEYS[2].key)
        async with http.get(f"{base}/api/trades/5/proof", params={"address": KEYS[1].address, "ts": str(ts),
                                                                  "sig": bad}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "BAD_SIGNATURE"
        async with http.get(f"{base}/api/trades/5/proof", params={"address": KEYS[1].address,
                                                                  "ts": str(ts - 3600), "sig": sig}) as resp:
            assert resp.status == 401
        # what is missing or malformed is a 422 naming it (rest.md; the OpenAPI marks the three required)
        for path, params, where in (
                ("/api/trades/5/proof", {"address": KEYS[1].address, "ts": str(ts)}, ["sig"]),
                ("/api/trades/5/proof", {"address": KEYS[1].address, "ts": str(ts), "sig": "0x1234"}, ["sig"]),
                ("/api/trades/0/proof", {"address": KEYS[1].address, "ts": str(ts), "sig": sig},
                 ["path", "trade_id"])):
            async with http.get(f"{base}{path}", params=params) as resp:
                body = await resp.json()
                assert resp.status == 422 and body["error"] == "INVALID_REQUEST", body
                assert [d["loc"] for d in body["details"]] == [where], body
        # the operator: status, any trade's proof, reconciliation
        async with http.get(f"{base}/api/operator/settlement", headers=AUTH) as resp:
            st = await resp.json()
            assert resp.status == 200 and st["pending_trades"] == 0 and st["alert"] is None
            assert {b["state"] for b in st["batches"]} == {"anchored"} and st["last_anchored_block"]
            # times in UTC with Z, as everywhere (websocket.md, "Times")
            assert st["updated_at"].endswith("Z") and all(b["anchored_at"].endswith("Z") for b in st["batches"])
        async with http.get(f"{base}/api/operator/settlement") as resp:
            assert resp.status == 401
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
            assert "voltbourse_settlement_trades_anchored_total 6.0" in text
            assert "voltbourse_settlement_alert 0.0" in text
        async with http.get(f"{base}/api/operator/trades/1/proof", headers=AUTH) as resp:
            assert resp.status == 200 and verify_proof(await resp.json(), chain.registry)
        async with http.post(f"{base}/api/operator/settlement/reconcile", headers=AUTH) as resp:
            rep = await resp.json()
            assert resp.status == 200 and rep["ok"] and rep["trades"] == 6, rep
            assert rep["checked_at"].endswith("Z")
        # settled money moved on chain and the engine follows it
        value = sum((1000 + i) * (9_000 + i) for i in range(6))
        assert chain.collateral(KEYS[0].address) == DEPOSIT - value
        assert chain.collateral(KEYS[1].address) == DEPOSIT + value
        await _until(lambda: _true(market.engine.accounts[KEYS[0].address].net_payable == 0))
        assert market.engine.accounts[KEYS[0].address].collateral == DEPOSIT - value
        # a member created by the operator with collateral is credited on chain (on-ramp)
        newcomer = OUTSIDER
        body = {"address": newcomer.address, "name": "newcomer", "role": "consumer", "collateral": 12_345_678,
                "retail_tariff_ticks": 30_000, "feed_in_tariff_ticks": 8_000}
        async with http.post(f"{base}/api/operator/members", json=body, headers=AUTH) as resp:
            assert resp.status == 201, await resp.text()
        assert chain.collateral(newcomer.address) == 12_345_678
        assert market.engine.accounts[newcomer.address].collateral == 12_345_678
        # and a PATCH of collateral does not overwrite what the chain says
        async with http.patch(f"{base}/api/operator/members/{newcomer.address}", json={"collateral": 1},
                              headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
        assert market.engine.accounts[newcomer.address].collateral == 12_345_678


async def _true(v):
    return v


async def _settled(pool, n):
    return await pool.fetchval("SELECT count(*) FROM trades t " + BATCH_OF_TRADE +
                               " WHERE b.state = 'anchored' AND b.collateral_applied") == n
