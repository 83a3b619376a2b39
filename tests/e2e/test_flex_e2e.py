"""Flexibility end to end: bots (SDK over real WebSockets) declare baselines and offers,
the operator opens an event over REST, invitations go out (a decline invites the next),
the pooled bid goes to the simulated balancing market, which activates it; bots deliver
(one only partly), the 10-minute checks call reserves, and the revenue shares are
written as pending payouts, which the settlement worker (in-process EVM, contracts
compiled from source) settles on chain: shares credited to and penalties debited from
the members' collateral, which the engine then follows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from support import keys
from support.keys import AUTH
from support.server import member

from clients.bots.flex_bot import FlexBot
from clients.sdk.client import VoltbourseClient
from clients.sdk.errors import RequestError
from exchange.core.units import to_us
from exchange.flexibility.core import FlexConfig, ProductRules
from exchange.flexibility.market import SimulatedBalancingMarket
from exchange.flexibility.plugin import FLEX
from exchange.runtime.clock import ManualClock
from settlement.plugin import SETTLEMENT

pytestmark = pytest.mark.e2e

T = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
P = T + timedelta(hours=2)  # the event's delivery period
KEYS = keys.KEYS[:7]  # the members
CREDIT = 10**12  # each member's on-chain collateral before the event (covers any penalty)


async def until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_demand_response_event_end_to_end(serve, pool):
    clock = ManualClock(T)
    async with serve(market_id="flex-e2e", clock=clock, settlement_enabled=True, settlement_process="inline", settlement_max_age_s=0.2,
                     settlement_poll_s=0.05,
                     # with settlement on, collateral comes from the chain only
                     members=[member(k, collateral=None) for k in KEYS]) as server:
        market, runner = server.market, server.runner
        base, url = server.http, server.url
        worker = runner.app[SETTLEMENT]
        chain, registry = worker.chain, worker.chain.registry
        # hold the worker's payout stage until the test has seen the payouts pending
        payouts_released = asyncio.Event()
        settle_payouts = worker.settle_payouts

        async def gated_settle_payouts() -> bool:
            return await settle_payouts() if payouts_released.is_set() else False

        worker.settle_payouts = gated_settle_payouts
        for k in KEYS:  # the operator's on-ramp, on chain
            await worker.credit_member(k.address, CREDIT)
        before = {k.address: await worker._chain(chain.collateral, k.address) for k in KEYS}  # on the chain thread
        assert all(c == CREDIT for c in before.values())
        assert all(market.engine.accounts[k.address].collateral == CREDIT for k in KEYS)
        flex = runner.app[FLEX]
        await flex.stop()  # the test steps the service itself
        flex.market = SimulatedBalancingMarket(seed=3, force_activation=True)
        flex.config = FlexConfig(rules=ProductRules(), reserve_margin_ppm=100_000)
        flex.grace_us = 0
        clients = []
        try:
            bots = []
            for i, k in enumerate(KEYS):
                c = VoltbourseClient(url, k.key, reconnect=False)
                await c.connect()
                clients.append(c)
                bots.append(FlexBot(c, seed=i, power_w=300_000, price=5_000 + 500 * i,
                                    consumption_wh_per_slot=200_000,
                                    delivery_ppm=400_000 if i == 1 else 1_000_000,  # bot 1 delivers 40 %
                                    accept_ppm=0 if i == 2 else 1_000_000))  # bot 2 declines
            offers = [await b.declare(P) for b in bots]
            assert all(o["status"] == "open" and o["power_w"] == 300_000 for o in offers)

            async with aiohttp.ClientSession(headers=AUTH) as http:
                r = await http.get(f"{base}/api/operator/flexibility/viability", params={"period_start": P.isoformat()})
                v = await r.json()
                assert r.status == 200 and v["consumption_wh"] > 0 and v["generation_wh"] == 0
                r = await http.post(f"{base}/api/operator/flexibility/events",
                                    json={"period_start": P.isoformat(), "target_w": 1_000_000})
                ev = await r.json()
                assert r.status == 201, ev
                eid = ev["event_id"]
                assert len(ev["invitations"]) == 5  # 1.3 MW to cover: 5 x 300 kW
                await until(lambda: sum(len(b.invitations) for b in bots) >= 6)  # the decline invited the 6th
                for b in bots:
                    await b.settle_answers()
                e = flex.events[eid]
                assert sum(i.status == "accepted" for i in e.invitations.values()) == 5
                assert any(i.status == "declined" and i.member == KEYS[2].address for i in e.invitations.values())
                # an invited member cannot raise its baseline of the event's period any more (it is
                # what its delivery is measured against)
                members = {i.member for i in e.invitations.values()}
                invited = next(b for b, c in zip(bots, clients, strict=True) if c.member in members)
                with pytest.raises(RequestError) as raised:
                    await invited.flex.baseline([(P, 10**9, 0)])
                assert raised.value.code == "INVALID_SLOT" and "invited" in raised.value.message

                clock.set(to_us(P) - 25 * 60 * 1_000_000)  # the market's gate: bids, then activation
                await flex.step()
                await flex.step()
                bids = await (await http.get(f"{base}/api/operator/flexibility/bids")).json()
                assert [b["volume_w"] for b in bids] == [1_300_000]  # 1.5 MW x 0.9 -> 1.35 -> 1.3 MW
                assert bids[0]["status"] == "activated" and bids[0]["activated_w"] >= 100_000
                activated = bids[0]["activated_w"]
                await until(lambda: sum(sum(i["power_w"] for i in b.instructions) for b in bots) == activated)

                for k in range(6):
                    t0 = P + timedelta(minutes=10 * k)
                    clock.set(to_us(t0 + timedelta(minutes=10)))
                    await asyncio.gather(*(b.report(t0) for b in bots if b.instructions))
                    n_before = sum(len(b.instructions) for b in bots)
                    await flex.step()
                    await asyncio.sleep(0.05)
                    if k == 0:
                        await until(lambda n=n_before: sum(len(b.instructions) for b in bots) > n)  # reserves called

                ev = await (await http.get(f"{base}/api/operator/flexibility/events/{eid}")).json()
                assert ev["phase"] == "settled"
                assert any(a["reserve"] for a in ev["activations"])
                assert any(d["shortfall_wh"] > 0 and d["member"] == KEYS[1].address for d in ev["delivery"])
                assert ev["revenue_units"] > 0 and ev["penalty_units"] > 0
                payouts = await (await http.get(f"{base}/api/operator/flexibility/payouts")).json()
                assert sum(p["amount_units"] for p in payouts) == ev["revenue_units"] - ev["penalty_units"]
                assert all(p["status"] == "pending" for p in payouts)
                shares = ev["shares"]
                assert sum(s["share_units"] for s in shares) == ev["revenue_units"]
                metrics = await (await http.get(f"{base}/metrics")).text()
                assert "voltbourse_flex_reserve_calls_total" in metrics
                assert 'voltbourse_flex_events{phase="settled"} 1.0' in metrics
                r = await http.post(f"{base}/api/operator/flexibility/events", json={"period_start": "nope"})
                assert r.status == 422
                async with aiohttp.ClientSession() as anon:
                    assert (await anon.get(f"{base}/api/operator/flexibility/events")).status == 401

            await until(lambda: any(b.payouts for b in bots))
            # the settlement worker settles the event's payouts on chain
            assert not await worker._chain(registry.functions.payoutBatches(eid).call)
            payouts_released.set()
            worker.wake()

            async def settled() -> bool:
                rows = await pool.fetch("SELECT status FROM flex_payouts WHERE market_id = 'flex-e2e' "
                                        "AND event_id = $1", eid)
                return len(rows) == len(payouts) and all(r["status"] == "settled" for r in rows)

            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while not await settled():
                assert loop.time() < end, "payouts not settled in time"
                await asyncio.sleep(0.05)
            assert await flex.store.pending_payouts() == []
            assert await worker._chain(registry.functions.payoutBatches(eid).call)
            paid = {p["member"]: p["amount_units"] for p in payouts}
            assert len(paid) == len(payouts)  # one payout per member
            assert any(a > 0 for a in paid.values()) and any(a < 0 for a in paid.values())  # shares and a penalty
            after = {k.address: await worker._chain(chain.collateral, k.address) for k in KEYS}
            for addr in before:
                assert after[addr] - before[addr] == paid.get(addr, 0), addr
            assert sum(after[a] - before[a] for a in before) == ev["revenue_units"] - ev["penalty_units"]
            # the engine follows the chain
            await until(lambda: all(market.engine.accounts[a].collateral == after[a] for a in after))
            assert worker.alert is None and worker.stats["chain_errors"] == 0
            # stored state
            assert await pool.fetchval("SELECT count(*) FROM flex_delivery WHERE market_id = 'flex-e2e'") > 0
            assert await pool.fetchval("SELECT phase FROM flex_events WHERE event_id = $1", eid) == "settled"
        finally:
            for c in clients:
                await c.close()
