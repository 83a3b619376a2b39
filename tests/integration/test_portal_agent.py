"""The managed trading agent (portal, "My agent") against a real server: a member signs an
EIP-712 delegation in its wallet; the platform's agent then trades for it within the
signed limits (its orders journaled with an order_delegated event); revoking stops it at
once and cancels its orders; a forged, foreign or out-of-bounds delegation is refused; the
agent survives a restart."""

from __future__ import annotations

import asyncio

import pytest
from support.keys import KEYS
from support.server import member
from support.wsclient import peer
from test_portal_auth import jar, sign_in

from exchange.core.model import OrderDelegated, PlaceOrder, Side
from exchange.protocol import auth
from settlement.plugin import SETTLEMENT

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="agentm", members=KEYS[:3])]
A, B = KEYS[0], KEYS[1]

LIMITS = {"max_buy_price_eur_mwh": "95", "min_sell_price_eur_mwh": "140", "max_order_kwh": "2",
          "daily_budget_eur": "1", "excluded_hours": [3], "expires_in_hours": 24}


async def _call(http, server, method: str, path: str, sid: str, csrf: str | None, body=None):
    headers = {**jar(sid, server.http)}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    async with http.request(method, server.http + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def _enable(http, server, key=A, limits=None, signer=None):
    sid, login = await sign_in(http, server, key)
    csrf = login["csrf_token"]
    st, prep = await _call(http, server, "POST", "/portal/agent/prepare", sid, csrf, limits or LIMITS)
    assert st == 200, prep
    typed = prep["typed_data"]
    sig = auth.sign_order(typed, (signer or key).key)
    st, body = await _call(http, server, "POST", "/portal/agent", sid, csrf, {"typed_data": typed, "signature": sig})
    return sid, csrf, typed, st, body


async def _wait(pred, timeout: float = 10.0):
    for _ in range(int(timeout / 0.1)):
        if pred():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_agent_trades_within_limits_and_stops_when_revoked(server, http):
    sid, csrf, typed, st, body = await _enable(http, server)
    assert st == 201 and body["active"], body
    assert body["delegation"]["delegation_id"] == auth.typed_data_hash(typed)
    engine = server.market.engine
    member = A.address
    # the agent rests buys at the cap (9 500 ticks) and sells at the floor (14 000), 2 kWh each
    assert await _wait(lambda: sum(1 for o in engine.orders.values() if o.member == member) >= 2)
    mine = [o for o in engine.orders.values() if o.member == member]
    assert all((o.price <= 9_500 if o.side is Side.BUY else o.price >= 14_000) and o.remaining <= 2_000
               for o in mine)
    # another member sells below the cap: the agent's bid takes it
    pid = mine[0].product_id
    res = await server.market.runtime.submit(PlaceOrder(0, B.address, pid, Side.SELL, 9_000, 1_000))
    assert any(e.type == "trade" and e.buyer == member and e.price == 9_500 for e in res.events)
    # the journal shows the agent's orders under the delegation
    rows = await server.market.pool.fetch("SELECT events FROM journal WHERE market_id = 'agentm'")
    delegated = [e for r in rows for e in r["events"] if e["type"] == OrderDelegated.type]
    assert delegated and all(e["delegation"] == body["delegation"]["delegation_id"] and e["member"] == member
                             for e in delegated)
    # the daily budget (1 EUR) bounds its buys: at most 1 EUR of limit value placed today
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert st == 200 and int(status["spent_today_units"]) <= 100_000_000
    # revoke: the agent stops at once and its resting orders are cancelled
    st, rev = await _call(http, server, "DELETE", "/portal/agent", sid, csrf)
    assert st == 200 and rev["revoked"] == body["delegation"]["delegation_id"] and rev["cancelled_orders"] >= 1
    assert not any(o.member == member for o in engine.orders.values())
    await asyncio.sleep(1.5)  # a step later: nothing new
    assert not any(o.member == member for o in engine.orders.values())
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["active"] is False and status["delegation"] is None
    # the revoked delegation, posted again (its signature kept): refused, the agent stays off
    sig = auth.sign_order(typed, A.key)
    st, again = await _call(http, server, "POST", "/portal/agent", sid, csrf, {"typed_data": typed, "signature": sig})
    assert st == 409 and again["error"] == "AGENT_DELEGATION_REVOKED", again
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["active"] is False
    await asyncio.sleep(1.5)
    assert not any(o.member == member for o in engine.orders.values())


async def test_buys_at_negative_prices_do_not_raise_the_days_budget(server, http):
    """A delegation resting buys at a negative price (-499 EUR/MWh) put "spent today" at minus
    hundreds of euros; cancelled unfilled, the next delegation of the day placed buys far
    beyond its signed budget."""
    engine = server.market.engine
    cheap = {**LIMITS, "max_buy_price_eur_mwh": "-499", "excluded_hours": []}
    sid, csrf, _, st, body = await _enable(http, server, limits=cheap)
    assert st == 201, body
    assert await _wait(lambda: sum(1 for o in engine.orders.values() if o.member == A.address and o.price < 0) >= 4)
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["spent_today_units"] == "0", status
    # a new delegation (the old one's orders cancelled, unfilled): 1 EUR a day, 5 kWh buys at
    # 95 EUR/MWh (0.475 EUR each): two buys at most
    bigger = {**LIMITS, "max_order_kwh": "5", "excluded_hours": []}
    sid, csrf, _, st, body = await _enable(http, server, limits=bigger)
    assert st == 201, body
    assert await _wait(lambda: sum(1 for o in engine.orders.values() if o.member == A.address) >= 4)
    await asyncio.sleep(1.5)  # another round or two
    buys = [o for o in engine.orders.values() if o.member == A.address and o.side is Side.BUY]
    assert len(buys) == 2 and sum(o.price * o.remaining for o in buys) <= 100_000_000, buys
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["spent_today_units"] == str(2 * 9_500 * 5_000) and status["refused"] >= 2, status


async def test_refusals(server, http):
    # signed by another key
    *_, st, body = await _enable(http, server, signer=B)
    assert st == 401 and body["error"] == "BAD_SIGNATURE"
    # limits the agent does not accept
    bad = {**LIMITS, "min_sell_price_eur_mwh": "90"}  # floor below cap
    sid, login = await sign_in(http, server, A)
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"], bad)
    assert st == 422 and body["error"] == "AGENT_DELEGATION_INVALID" and "floor" in body["message"]
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"],
                           {**LIMITS, "max_buy_price_eur_mwh": "95.001"})
    assert st == 422
    # a delegation changed after signing (a higher cap), or naming another delegate
    st, prep = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"], LIMITS)
    typed = prep["typed_data"]
    sig = auth.sign_order(typed, A.key)
    forged = {**typed, "message": {**typed["message"], "maxBuyPrice": 12_000}}
    st, body = await _call(http, server, "POST", "/portal/agent", sid, login["csrf_token"],
                           {"typed_data": forged, "signature": sig})
    assert st == 401 and body["error"] == "BAD_SIGNATURE"
    # a message without a field of the Delegation type (an older format): refused precisely
    short = {**typed, "message": {k: v for k, v in typed["message"].items() if k != "batteryPowerW"}}
    st, body = await _call(http, server, "POST", "/portal/agent", sid, login["csrf_token"],
                           {"typed_data": short, "signature": sig})
    assert st == 422 and body["error"] == "AGENT_DELEGATION_INVALID" and "batteryPowerW" in body["message"]
    # fields that are not the Delegation's, or not of its types, or beyond what is stored: refused,
    # signed or not (a nonce of 2^256-1, a valid uint256, answered 500 where it was stored)
    for changed, word in [({"nonce": 2**256 - 1}, "out of range"), ({"maxOrderWh": -1}, "out of range"),
                          ({"foo": "bar"}, "not expected foo"), ({"dailyBudget": "100"}, "integer"),
                          ({"expiry": True}, "integer"), ({"strategy": 1}, "string")]:
        odd = {**typed, "message": {**typed["message"], **changed}}
        st, body = await _call(http, server, "POST", "/portal/agent", sid, login["csrf_token"],
                               {"typed_data": odd, "signature": sig})  # (some of these cannot be signed)
        assert st == 422 and body["error"] == "AGENT_DELEGATION_INVALID" and word in body["message"], (changed, body)
    other = {**typed, "message": {**typed["message"], "delegate": B.address}}
    st, body = await _call(http, server, "POST", "/portal/agent", sid, login["csrf_token"],
                           {"typed_data": other, "signature": auth.sign_order(other, A.key)})
    assert st == 422 and "delegate" in body["message"]
    # CSRF and sign-in are required
    st, body = await _call(http, server, "POST", "/portal/agent", sid, None, {"typed_data": typed, "signature": sig})
    assert st == 403
    assert not any(o.member == A.address for o in server.market.engine.orders.values())


async def test_the_agent_survives_a_restart(server, http):
    sid, csrf, typed, st, body = await _enable(http, server)
    assert st == 201
    member = A.address

    def resting() -> list[tuple[str, str]]:
        return sorted((o.product_id, o.side.value) for o in server.market.engine.orders.values() if o.member == member)

    assert await _wait(lambda: len(resting()) >= 4)
    await asyncio.sleep(1.5)  # a full round: every (product, side) it wants is resting
    before = resting()
    await server.restart()
    await asyncio.sleep(2.5)  # the agent is back and has run its steps
    after = resting()
    assert after == before and len(set(after)) == len(after)  # remembered: nothing placed twice
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert st == 200 and status["active"] and len(status["orders"]) == len(before)


async def test_new_limits_replace_the_old_orders(server, http):
    """A new delegation while one is active: the orders placed under the old limits are
    cancelled, only orders within the new ones rest."""
    sid, csrf, typed, st, body = await _enable(http, server)
    assert st == 201
    member = A.address
    engine = server.market.engine
    assert await _wait(lambda: any(o.member == member and o.price == 9_500 for o in engine.orders.values()))
    *_, st, body = await _enable(http, server, limits={**LIMITS, "max_buy_price_eur_mwh": "90"})
    assert st == 201
    await asyncio.sleep(1.5)
    buys = [o.price for o in engine.orders.values() if o.member == member and o.side is Side.BUY]
    assert buys and all(p == 9_000 for p in buys)


@pytest.mark.server(settlement_enabled=True, settlement_process="inline", settlement_batch_size=2, settlement_max_age_s=0.2,
                    settlement_poll_s=0.05, members=[member(k, collateral=None) for k in KEYS[:3]], via="runtime")
async def test_the_proof_of_an_agents_trade_names_its_delegation(server, http):
    """Settlement copies order_delegated into its tables: the trade's proof names the
    delegation its order was placed under, and carries the root read from the chain."""
    worker = server.app[SETTLEMENT]
    for k in KEYS[:3]:
        await worker._chain(worker.chain.fund_member, k, 10**13)
    worker.wake()
    engine = server.market.engine
    assert await _wait(lambda: all(engine.accounts[k.address].collateral == 10**13 for k in KEYS[:3]))
    sid, csrf, typed, st, body = await _enable(http, server)
    assert st == 201, body
    delegation = body["delegation"]["delegation_id"]
    assert await _wait(lambda: any(o.member == A.address and o.side is Side.BUY for o in engine.orders.values()))
    pid = next(o.product_id for o in engine.orders.values() if o.member == A.address and o.side is Side.BUY)
    res = await server.market.runtime.submit(PlaceOrder(0, B.address, pid, Side.SELL, 9_000, 1_000))
    trade = next(e for e in res.events if e.type == "trade")
    c = await peer(http, server, 0)

    async def proof() -> dict:
        for _ in range(100):
            r = await c.request({"type": "trade_proof", "trade_id": trade.trade_id})
            if r["type"] == "response":
                return r["result"]
            await asyncio.sleep(0.1)
        raise AssertionError(r)

    p = await proof()
    assert p["delegations"] == {"buy": delegation, "sell": None}
    assert p["chain_root"] == p["root"]


async def test_limits_worth_more_than_the_markets_order_value_cap_are_refused(server, http):
    """An order of the delegation's size at its cap or floor that the market's order-value cap
    (`MAX_ORDER_VALUE_EUR`, 50 000 EUR here) refuses: the delegation is refused when prepared,
    with the size that fits, instead of an agent whose every order the market refuses."""
    sid, login = await sign_in(http, server, A)
    big = {**LIMITS, "max_order_kwh": "1000000", "max_buy_price_eur_mwh": "300", "min_sell_price_eur_mwh": "400",
           "daily_budget_eur": "999999999"}  # 1 GWh at 400 EUR/MWh: 400 000 EUR
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"], big)
    assert st == 422 and body["error"] == "AGENT_DELEGATION_INVALID", body
    assert "maximum order value" in body["message"] and "at most 125000000 Wh per order" in body["message"], body
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"],
                           {**big, "max_order_kwh": "125000"})
    assert st == 200, body


@pytest.mark.server(market_id="agentm", members=[member(A, collateral=0, export_capacity_w=0), B, KEYS[2]])
async def test_orders_the_market_refuses_are_not_sent_again_every_round(server, http):
    """Orders the engine refuses (here: the member has no collateral for its buys and no
    export capacity for its sells): the agent re-sent them every second, about 8 refused
    orders a second per member for as long as the delegation ran. It backs off now (2 s, 4 s,
    ... up to 5 min) and says why."""
    sid, csrf, typed, st, body = await _enable(http, server)
    assert st == 201, body
    await asyncio.sleep(4.5)
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["placed"] == 0 and 1 <= status["refused"] <= 3, status  # about 1 per back-off, not 8 a second
    assert "refused" in (status.get("note") or ""), status
