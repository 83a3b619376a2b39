"""Order conditions and block orders over the peer WebSocket, against a real server and
database, with signatures built by hand from the documented EIP-712 types (as a client
written from docs/websocket.md would)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from support.keys import KEYS
from support.times import GATE, T0
from support.wsclient import peer

from exchange.core.units import from_us

pytestmark = [pytest.mark.integration,
              pytest.mark.server(market_id="types", members=KEYS[:3], mechanism="call_then_continuous",
                                 gate="rolling")]

DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
               {"name": "chainId", "type": "uint256"}]
ORDER_FIELDS = [{"name": "market", "type": "string"}, {"name": "product", "type": "string"},
                {"name": "side", "type": "string"}, {"name": "price", "type": "int256"},
                {"name": "quantity", "type": "uint256"}, {"name": "tif", "type": "string"},
                {"name": "clientOrderId", "type": "string"}, {"name": "nonce", "type": "uint256"}]


def _sign(key, hello: dict, primary: str, fields: list, message: dict) -> str:
    typed = {"types": {"EIP712Domain": DOMAIN_TYPE, primary: fields}, "primaryType": primary,
             "domain": hello["eip712_domain"], "message": message}
    sig = Account.sign_message(encode_typed_data(full_message=typed), key.key).signature.hex()
    return "0x" + sig.removeprefix("0x")


def _products(server, state: str) -> list[str]:
    return sorted(p for p, pb in server.market.engine.products.items() if pb.state.value == state)


async def test_post_only_good_till_date_and_minimum_quantity(serve, http):
    async with serve() as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        pid = _products(server, "open")[0]  # today's products trade continuously meanwhile
        await a.request({"type": "place", "product_id": pid, "side": "sell", "price": 9000, "quantity": 10})
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 9000, "quantity": 5,
                             "post_only": True})
        assert r["code"] == "POST_ONLY_WOULD_TRADE", r
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 9000, "quantity": 20,
                             "tif": "ioc", "min_quantity": 11})
        assert r["type"] == "response" and r["result"]["status"] == "cancelled" and r["result"]["filled"] == 0, r
        # good till date, signed as a ConditionalOrder with the expiry in Unix seconds
        until = from_us(T0) + timedelta(minutes=10)
        sig = _sign(KEYS[1], b.hello, "ConditionalOrder", [*ORDER_FIELDS, {"name": "postOnly", "type": "bool"},
                                                          {"name": "expireTime", "type": "uint256"},
                                                          {"name": "minQuantity", "type": "uint256"}],
                    {"market": "types", "product": pid, "side": "buy", "price": 8000, "quantity": 5, "tif": "gtc",
                     "clientOrderId": "", "nonce": 7, "postOnly": True, "expireTime": int(until.timestamp()),
                     "minQuantity": 0})
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 8000, "quantity": 5,
                             "post_only": True, "expire_time": until.isoformat().replace("+00:00", "Z"),
                             "signature": sig, "nonce": 7})
        assert r["type"] == "response" and r["result"]["status"] == "resting", r
        oid = r["result"]["order_id"]
        # the same signature does not cover another expiry
        later = (until + timedelta(minutes=1)).isoformat()
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 8000, "quantity": 5,
                             "post_only": True, "expire_time": later, "signature": sig, "nonce": 8})
        assert r["code"] == "BAD_SIGNATURE", r
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 8000, "quantity": 5,
                             "expire_time": "2026-11-21T08:10:00.5Z"})
        assert r["code"] == "INVALID_MESSAGE" and "whole seconds" in r["message"], r
        server.clock.advance(10 * 60)
        ex = await b.next_of(lambda m: m.get("exec") == "expired" and m.get("order_id") == oid, timeout=5)
        assert ex["remaining"] == 5
        st = await b.request({"type": "order_status", "order_id": oid})
        assert st["result"]["status"] == "expired", st


async def test_a_block_order_in_the_day_ahead_auction(serve, http):
    async with serve() as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        hours = _products(server, "auction")[8:11]
        for p, price in zip(hours, (8000, 9000, 10_000)):
            await a.request({"type": "place", "product_id": p, "side": "sell", "price": price, "quantity": 100})
        sig = _sign(KEYS[1], b.hello, "BlockOrder",
                    [{"name": "market", "type": "string"}, {"name": "products", "type": "string"},
                     {"name": "side", "type": "string"}, {"name": "price", "type": "int256"},
                     {"name": "quantity", "type": "uint256"}, {"name": "clientOrderId", "type": "string"},
                     {"name": "nonce", "type": "uint256"}],
                    {"market": "types", "products": ",".join(hours), "side": "buy", "price": 9000, "quantity": 100,
                     "clientOrderId": "blk-1", "nonce": 1})
        r = await b.request({"type": "place_block", "product_ids": hours, "side": "buy", "price": 9000,
                             "quantity": 100, "client_order_id": "blk-1", "signature": sig, "nonce": 1})
        assert r["type"] == "response" and r["result"]["status"] == "pending", r
        oid = r["result"]["order_id"]
        acc = await b.next_of(lambda m: m.get("exec") == "block_accepted")
        assert acc["order_id"] == oid and acc["product_ids"] == hours
        bad = await b.request({"type": "place_block", "product_ids": [hours[0], hours[2]], "side": "buy",
                               "price": 9000, "quantity": 1})
        assert bad["code"] == "BLOCK_NOT_ALLOWED", bad
        server.clock.set(GATE)  # the day-ahead time: the auction clears, the block with it
        res = await b.next_of(lambda m: m.get("exec") == "block_result", timeout=10)
        assert res["order_id"] == oid and res["executed"] is True and res["prices"] == [8000, 9000, 10_000]
        fills = [m for m in b.inbox if m.get("exec") == "fill" and m.get("order_id") == oid]
        assert sorted((f["product_id"], f["quantity"], f["liquidity"]) for f in fills) == \
            [(h, 100, "auction") for h in hours]
        st = await b.request({"type": "order_status", "client_order_id": "blk-1"})
        assert "result" in st, st
        st = st["result"]
        assert (st["order_id"], st["status"], st["tif"], st["quantity"], st["filled"], st["remaining"]) == \
            (oid, "filled", "block", 300, 300, 0) and len(st["fills"]) == 3
        # continuous trading follows: the products are open
        assert {server.market.engine.products[h].state.value for h in hours} == {"open"}

