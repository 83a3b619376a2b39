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
exception when the answer is an ``error`` (the SDK's
:class:`~clients.sdk.errors.RequestError` for its code) or the socket fails. A
cancel that finds its order already filled by someone else is a normal race,
reported as success under ``cancel (already gone)``. Book gaps are counted
under ``book gap`` (a failure, :class:`~clients.sdk.book.BookGap`: the server
should never skip a delta on a healthy connection).

Gevent: users are greenlets, so the socket is synchronous (``websocket-client``,
made cooperative by Locust's monkey patching); asyncio, and so the SDK's
client, cannot be used here. Everything else is the SDK's: requests are built,
answers read and errors typed by :mod:`clients.sdk.wire` (as in the asyncio
client), and the watched book is a :class:`clients.sdk.book.LocalBook`.

Members: user *n* uses the key of member ``n mod VOLTBOURSE_LOADTEST_MEMBERS``
(keys from ``clients.sdk.member_key("loadtest-<seed>", n)``); ``loadtest/run.py``
registers them first. Run by hand against a running exchange:

    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080/ws
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

import websocket
from eth_account.signers.local import LocalAccount
from locust import User, between, task

from clients.sdk import wire
from clients.sdk.book import BookGap, LocalBook
from clients.sdk.errors import RequestError
from clients.sdk.keys import member_key
from clients.sdk.models import BookDelta, BookSnapshot, Execution, OpenOrder, ProductsResult

SEED = os.environ.get("VOLTBOURSE_LOADTEST_SEED", "1")
MEMBERS = int(os.environ.get("VOLTBOURSE_LOADTEST_MEMBERS", "100"))
PRODUCTS = int(os.environ.get("VOLTBOURSE_LOADTEST_PRODUCTS", "6"))
_next_member = itertools.count()


def loadtest_key(index: int, seed: str = SEED) -> LocalAccount:
    return member_key(f"loadtest-{seed}", index)


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
        self.book: LocalBook | None = None
        self.resync = False
        self.ws: websocket.WebSocket | None = None
        self._connect()

    def on_stop(self) -> None:
        self._drop()

    # ------------------------------------------------------------------ plumbing
    def _fire(self, name: str, t0: float, exc: Exception | None = None, length: int = 0) -> None:
        self.environment.events.request.fire(request_type="WS", name=name,
                                             response_time=(time.perf_counter() - t0) * 1000,
                                             response_length=length, exception=exc, context={})

    def _id(self) -> int:
        return next(self.ids)

    def _drop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None

    def _connect(self) -> websocket.WebSocket:
        t0 = time.perf_counter()
        try:
            self.ws = ws = websocket.create_connection(self.host, timeout=30)
            hello = wire.read_hello(ws.recv())
            self._fire("connect", t0)
        except Exception as exc:
            self._fire("connect", t0, exc)
            self.ws = None
            raise
        self.request("login", wire.login(self._id(), hello, self.acct))
        result = self.request("subscribe", wire.subscribe(self._id(), "products"))
        if result is None:
            raise RuntimeError("subscribing to the products failed")
        open_ = ProductsResult.model_validate(result).open_products()
        if not open_:
            raise RuntimeError("no open product on the exchange")
        self.products = open_[:PRODUCTS]
        self.watch = self.rng.choice(self.products)
        self.book = LocalBook(self.watch)
        self.refs = {p: 9_000 + 100 * (i % 7) for i, p in enumerate(self.products)}
        self.request("subscribe", wire.subscribe(self._id(), "book", self.watch))
        return ws

    def _on_push(self, m: dict[str, Any]) -> None:
        """A message that is not the awaited answer: follow the book, track my orders."""
        t = m.get("type")
        if t == "execution":
            ex = Execution.model_validate(m)
            if ex.exec == "accepted" and ex.remaining and ex.order_id is not None:
                self.mine.add(ex.order_id)
            elif ex.exec in ("cancelled", "expired") or (ex.exec == "fill" and ex.remaining == 0):
                self.mine.discard(ex.order_id)
        elif self.book is None or m.get("product_id") != self.watch:
            return
        elif t == "book_snapshot":
            self.book.reset(BookSnapshot.model_validate(m))
        elif t == "book":
            try:
                self.book.follow(BookDelta.model_validate(m))
            except BookGap as exc:
                self._fire("book gap", time.perf_counter(), exc)
                self.resync = True  # re-subscribed by the next task (not from inside this read loop)

    def request(self, name: str, msg: dict[str, Any], ok_codes: dict[str, str] | None = None) -> Any:
        """Send ``msg`` (built by :mod:`clients.sdk.wire`), read until its answer, report it to
        Locust; returns the result (or None)."""
        ws = self.ws if self.ws is not None else self._connect()
        t0 = time.perf_counter()
        try:
            ws.send(wire.encode(msg))
            while True:
                raw = ws.recv()
                m = wire.decode(raw)
                if wire.answer_id(m) == msg["id"]:
                    break
                self._on_push(m)
        except Exception as exc:  # the socket failed: report, reconnect on the next request
            self._fire(name, t0, exc)
            self._drop()
            return None
        try:
            result = wire.result_of(m, msg)
        except RequestError as exc:
            if ok_codes and exc.code in ok_codes:
                self._fire(ok_codes[exc.code], t0, None, len(raw))
            else:
                self._fire(name, t0, exc, len(raw))
            return None
        self._fire(name, t0, None, len(raw))
        return result

    # ------------------------------------------------------------------ tasks
    @task(6)
    def place_resting(self) -> None:
        if self.resync:
            self.resync = False
            self.request("unsubscribe", wire.unsubscribe(self._id(), "book", self.watch))
            self.request("subscribe", wire.subscribe(self._id(), "book", self.watch))
        p = self.rng.choice(self.products)
        side = self.rng.choice(("buy", "sell"))
        off = self.rng.randrange(50, 1500)
        price = self.refs[p] - off if side == "buy" else self.refs[p] + off
        self.request("place", wire.place(self._id(), p, side, price, self.rng.randrange(1, 20) * 100))

    @task(2)
    def place_crossing(self) -> None:
        p = self.rng.choice(self.products)
        side = self.rng.choice(("buy", "sell"))
        price = self.refs[p] + 1500 if side == "buy" else self.refs[p] - 1500
        self.request("place crossing", wire.place(self._id(), p, side, price, self.rng.randrange(1, 10) * 100,
                                                  self.rng.choice(("gtc", "ioc"))))

    @task(3)
    def cancel(self) -> None:
        if not self.mine:
            return
        oid = self.rng.choice(sorted(self.mine))
        self.mine.discard(oid)
        self.request("cancel", wire.cancel(self._id(), oid), ok_codes={"UNKNOWN_ORDER": "cancel (already gone)"})

    @task(1)
    def my_orders(self) -> None:
        r = self.request("orders", wire.orders(self._id()))
        if r is not None:
            self.mine = {OpenOrder.model_validate(o).order_id for o in r["orders"]}
