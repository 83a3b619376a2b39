"""Locust scenario: members trading over the peer WebSocket protocol.

Each simulated user is one member: it connects (``host`` is the exchange's
``ws://HOST:PORT/ws``), logs in by signing the challenge, subscribes to the
book of one product and then places resting orders, crossing orders and
cancels its own orders, while reading whatever the server pushes (execution
reports, book deltas) and keeping the book in sync by ``seq``/``prev_seq``.

Every request is reported to Locust as a request event: ``request_type`` "WS",
``name`` the message type (``login``, ``place``, ``place crossing``,
``cancel``, ``subscribe``), ``response_time`` from sending the request to
receiving its answer (for orders: after the exchange's journal commit), and an
exception when the answer is an ``error`` (its code) or the socket fails. A
cancel that finds its order already filled by someone else is a normal race,
reported as success under ``cancel (already gone)``. Book gaps are counted
under ``book gap`` (a failure: the server should never skip a delta on a
healthy connection).

Gevent: users are greenlets, so the client is synchronous (``websocket-client``,
made cooperative by Locust's monkey patching); asyncio cannot be used here.

Members: user *n* uses the key of member ``n mod VOLTBOURSE_LOADTEST_MEMBERS``
(keys from ``clients.sdk.member_key("loadtest-<seed>", n)``); ``loadtest/run.py``
registers them first. Run by hand against a running exchange:

    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080/ws
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import websocket
from locust import User, between, task

from clients.sdk.keys import member_key
from exchange.protocol.auth import sign_login

SEED = os.environ.get("VOLTBOURSE_LOADTEST_SEED", "1")
MEMBERS = int(os.environ.get("VOLTBOURSE_LOADTEST_MEMBERS", "100"))
PRODUCTS = int(os.environ.get("VOLTBOURSE_LOADTEST_PRODUCTS", "6"))
_next_member = itertools.count()


def loadtest_key(index: int, seed: str = SEED):
    return member_key(f"loadtest-{seed}", index)


class WSRequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ExchangeUser(User):
    """One member trading on the exchange over a WebSocket."""

    abstract = False
    wait_time = between(0.05, 0.25)
    host = "ws://127.0.0.1:8080/ws"

    def on_start(self) -> None:
        self.index = next(_next_member) % MEMBERS
        self.acct = loadtest_key(self.index)
        self.rng = random.Random(f"{SEED}-{self.index}-{id(self)}")
        self.ids = itertools.count(1)
        self.mine: set[int] = set()
        self.book_seq: int | None = None
        self.resync = False
        self.ws = None
        self._connect()

    def on_stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None

    # ------------------------------------------------------------------ plumbing
    def _fire(self, name: str, t0: float, exc: Exception | None = None, length: int = 0) -> None:
        self.environment.events.request.fire(request_type="WS", name=name,
                                             response_time=(time.perf_counter() - t0) * 1000,
                                             response_length=length, exception=exc, context={})

    def _connect(self) -> None:
        t0 = time.perf_counter()
        try:
            self.ws = websocket.create_connection(self.host, timeout=30)
            hello = json.loads(self.ws.recv())
            self._fire("connect", t0)
        except Exception as exc:
            self._fire("connect", t0, exc)
            self.ws = None
            raise
        self.market = hello["market_id"]
        self.request("login", {"type": "login", "address": self.acct.address,
                               "signature": sign_login(hello["challenge"], self.acct.key)})
        products = self.request("subscribe", {"type": "subscribe", "channel": "products"})["products"]
        open_ = sorted(p["product_id"] for p in products if p["state"] == "open")
        if not open_:
            raise RuntimeError("no open product on the exchange")
        self.products = open_[:PRODUCTS]
        self.watch = self.rng.choice(self.products)
        self.refs = {p: 9_000 + 100 * (i % 7) for i, p in enumerate(self.products)}
        self.request("subscribe", {"type": "subscribe", "channel": "book", "product_id": self.watch})

    def _on_push(self, m: dict) -> None:
        """A message that is not the awaited answer: follow the book, track my orders."""
        t = m.get("type")
        if t == "execution":
            if m["exec"] == "accepted" and m.get("remaining"):
                self.mine.add(m["order_id"])
            elif m["exec"] in ("cancelled", "expired") or (m["exec"] == "fill" and m.get("remaining") == 0):
                self.mine.discard(m["order_id"])
        elif t == "book_snapshot" and m["product_id"] == self.watch:
            self.book_seq = m["seq"]
        elif t == "book" and m["product_id"] == self.watch and self.book_seq is not None:
            if m["prev_seq"] != self.book_seq:
                self._fire("book gap", time.perf_counter(), WSRequestError("GAP", f"prev_seq {m['prev_seq']} != "
                                                                                   f"{self.book_seq}"))
                self.book_seq = None
                self.resync = True  # re-subscribed by the next task (not from inside this read loop)
                return
            self.book_seq = m["seq"]

    def request(self, name: str, msg: dict, ok_codes: dict[str, str] | None = None):
        """Send ``msg``, read until its answer, report it to Locust; returns the result (or None)."""
        if self.ws is None:
            self._connect()
        rid = next(self.ids)
        msg["id"] = rid
        t0 = time.perf_counter()
        try:
            self.ws.send(json.dumps(msg))
            while True:
                raw = self.ws.recv()
                m = json.loads(raw)
                if m.get("id") == rid and m.get("type") in ("response", "error"):
                    break
                self._on_push(m)
        except Exception as exc:  # the socket failed: report, reconnect on the next request
            self._fire(name, t0, exc)
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
            return None
        if m["type"] == "error":
            code = m.get("code", "?")
            if ok_codes and code in ok_codes:
                self._fire(ok_codes[code], t0, None, len(raw))
                return None
            self._fire(name, t0, WSRequestError(code, m.get("message", "")), len(raw))
            return None
        self._fire(name, t0, None, len(raw))
        return m["result"]

    # ------------------------------------------------------------------ tasks
    @task(6)
    def place_resting(self) -> None:
        if self.resync:
            self.resync = False
            self.request("unsubscribe", {"type": "unsubscribe", "channel": "book", "product_id": self.watch})
            self.request("subscribe", {"type": "subscribe", "channel": "book", "product_id": self.watch})
        p = self.rng.choice(self.products)
        side = self.rng.choice(("buy", "sell"))
        off = self.rng.randrange(50, 1500)
        price = self.refs[p] - off if side == "buy" else self.refs[p] + off
        self.request("place", {"type": "place", "product_id": p, "side": side, "price": price,
                               "quantity": self.rng.randrange(1, 20) * 100})

    @task(2)
    def place_crossing(self) -> None:
        p = self.rng.choice(self.products)
        side = self.rng.choice(("buy", "sell"))
        price = self.refs[p] + 1500 if side == "buy" else self.refs[p] - 1500
        self.request("place crossing", {"type": "place", "product_id": p, "side": side, "price": price,
                                        "quantity": self.rng.randrange(1, 10) * 100,
                                        "tif": self.rng.choice(("gtc", "ioc"))})

    @task(3)
    def cancel(self) -> None:
        if not self.mine:
            return
        oid = self.rng.choice(sorted(self.mine))
        self.mine.discard(oid)
        self.request("cancel", {"type": "cancel", "order_id": oid}, ok_codes={"UNKNOWN_ORDER": "cancel (already gone)"})

    @task(1)
    def my_orders(self) -> None:
        r = self.request("orders", {"type": "orders"})
        if r is not None:
            self.mine = {o["order_id"] for o in r["orders"]}
