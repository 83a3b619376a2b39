"""A small test client for the peer WebSocket protocol, written from docs/websocket.md."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from support.keys import KEYS


def personal_sign(text: str, acct) -> str:
    """EIP-191 personal_sign of ``text``, 0x-prefixed hex."""
    return "0x" + Account.sign_message(encode_defunct(text=text), acct.key).signature.hex().removeprefix("0x")


def siwe_text(offer: dict, address: str, **changes) -> str:
    """The EIP-4361 message of docs/websocket.md from the server's offer (``hello.siwe`` or
    ``GET /portal/siwe/nonce``) and a checksummed address; ``changes`` replace offered fields."""
    f = {**offer, **changes}
    lines = [f"{f['domain']} wants you to sign in with your Ethereum account:", address, "", f["statement"], "",
             f"URI: {f['uri']}", f"Version: {f['version']}", f"Chain ID: {f['chain_id']}", f"Nonce: {f['nonce']}",
             f"Issued At: {f['issued_at']}"]
    if f.get("expiration_time"):
        lines.append(f"Expiration Time: {f['expiration_time']}")
    return "\n".join(lines)


class WSClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, key=None) -> None:
        self.ws = ws
        self.acct = Account.from_key(key) if key is not None else None
        self.ids = itertools.count(1)
        self.hello: dict | None = None
        self.inbox: list[dict] = []  # everything that is not the awaited response

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str, key=None, **kw) -> WSClient:
        ws = await session.ws_connect(url, **kw)
        c = cls(ws, key)
        c.hello = await ws.receive_json(timeout=5)
        assert c.hello["type"] == "hello"
        return c

    @property
    def address(self) -> str:
        return self.acct.address

    async def login(self) -> dict:
        """Sign in with a Sign-In with Ethereum message built from ``hello.siwe``."""
        text = siwe_text(self.hello["siwe"], self.acct.address)
        return await self.request({"type": "login", "message": text, "signature": personal_sign(text, self.acct)})

    async def login_challenge(self) -> dict:
        """The deprecated login: the hello's challenge signed, with the address."""
        return await self.request({"type": "login", "address": self.acct.address,
                                   "signature": personal_sign(self.hello["challenge"], self.acct)})

    async def send(self, msg: dict) -> int:
        rid = msg.setdefault("id", f"wsclient-req-{next(self.ids)}")
        await self.ws.send_json(msg)
        return rid

    async def request(self, msg: dict, timeout: float = 10) -> dict:
        rid = await self.send(msg)
        return await self.answer(rid, timeout)

    async def answer(self, rid, timeout: float = 10) -> dict:
        for i, m in enumerate(self.inbox):
            if m.get("type") in ("response", "error") and m.get("id") == rid:
                return self.inbox.pop(i)
        while True:
            m = await self.ws.receive_json(timeout=timeout)
            if m.get("type") in ("response", "error") and m.get("id") == rid:
                return m
            self.inbox.append(m)

    async def next_of(self, pred, timeout: float = 5) -> dict:
        """The next message (buffered or new) matching ``pred``."""
        for i, m in enumerate(self.inbox):
            if pred(m):
                return self.inbox.pop(i)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            m = await self.ws.receive_json(timeout=max(0.01, end - loop.time()))
            if pred(m):
                return m
            self.inbox.append(m)

    async def drain(self, seconds: float = 0.2) -> None:
        """Collect whatever arrives within ``seconds`` into the inbox."""
        try:
            while True:
                self.inbox.append(await self.ws.receive_json(timeout=seconds))
        except (TimeoutError, TypeError):
            return

    def sign_order(self, order: dict, market_id: str, nonce: int, key=None) -> dict:
        dom = self.hello["eip712_domain"]
        typed = {
            "types": {
                "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                 {"name": "chainId", "type": "uint256"}],
                "Order": [{"name": "market", "type": "string"}, {"name": "product", "type": "string"},
                          {"name": "side", "type": "string"}, {"name": "price", "type": "int256"},
                          {"name": "quantity", "type": "uint256"}, {"name": "tif", "type": "string"},
                          {"name": "clientOrderId", "type": "string"}, {"name": "nonce", "type": "uint256"}],
            },
            "primaryType": "Order",
            "domain": dom,
            "message": {"market": market_id, "product": order["product_id"], "side": order["side"],
                        "price": order["price"], "quantity": order["quantity"], "tif": order.get("tif", "gtc"),
                        "clientOrderId": order.get("client_order_id") or "", "nonce": nonce},
        }
        signer = Account.from_key(key) if key is not None else self.acct
        sig = Account.sign_message(encode_typed_data(full_message=typed), signer.key).signature.hex()
        return {**order, "signature": "0x" + sig.removeprefix("0x"), "nonce": nonce}


async def peer(http: aiohttp.ClientSession, server, i: int) -> WSClient:
    """A client logged in as ``KEYS[i]`` on ``server``'s peer WebSocket (``server.url``)."""
    c = await WSClient.connect(http, server.url, KEYS[i].key)
    r = await c.login()
    assert r["type"] == "response" and r["result"]["member"] == KEYS[i].address, r
    return c
