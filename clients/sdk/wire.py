"""The pure half of the SDK: requests built, orders signed, answers and pushes read.

No socket and no event loop here. :class:`clients.sdk.client.VoltbourseClient`
(asyncio) and synchronous callers (the Locust user of ``loadtest/locustfile.py``,
which runs under gevent, where asyncio cannot) send and receive the frames
their own way and share everything else:

* **frames**: :func:`encode` / :func:`decode` (JSON text frames);
* **login**: :func:`read_hello` (the server's first frame) and :func:`login`
  (the request: a Sign-In with Ethereum message from the hello's offer, signed with EIP-191);
* **requests**, built from the server's own pydantic models
  (:mod:`exchange.protocol.messages`), so a malformed request fails here
  (``pydantic.ValidationError``) before it is sent: :func:`place`,
  :func:`cancel`, :func:`modify`, :func:`cancel_all`, :func:`orders`,
  :func:`order_status`, :func:`trades`, :func:`positions`, :func:`ping`, :func:`subscribe`,
  :func:`unsubscribe`. Each takes the request ``id`` first (the caller numbers
  its requests);
* **signed orders**: :class:`OrderSigner` adds the EIP-712 ``signature`` and a
  ``nonce`` from :class:`Nonces` (they only grow) to a ``place``;
* **answers**: :func:`is_answer`, :func:`answer_id` and :func:`result_of` (the
  ``result``, or the typed :class:`~clients.sdk.errors.RequestError` raised);
  :func:`order_result` reads an order outcome.

Pushes are read with the models of :mod:`clients.sdk.models`
(``Execution.model_validate(msg)``, ...) and a book is followed with
:class:`clients.sdk.book.LocalBook`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import orjson
from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel

from clients.sdk.errors import OutcomeUnknown, error_for
from clients.sdk.models import Hello, OrderResult
from exchange.protocol import auth, siwe
from exchange.protocol import messages as P

__all__ = [
    "Channel", "Nonces", "OrderSigner", "RequestId", "account", "answer_id", "cancel", "cancel_all", "decode", "dump",
    "encode", "is_answer", "login", "modify", "order_result", "orders", "ping", "place", "positions",
    "read_hello", "result_of", "subscribe", "trades", "unsubscribe",
]

RequestId = int | str
Channel = Literal["book", "trades", "products"]
Message = dict[str, Any]


# --------------------------------------------------------------------------- frames


def encode(msg: Message) -> str:
    """A message as the text of one WebSocket frame."""
    return orjson.dumps(msg).decode()


def decode(frame: str | bytes) -> Message:
    """The message of one text frame (``orjson.JSONDecodeError`` if it is not JSON)."""
    msg = orjson.loads(frame)
    if not isinstance(msg, dict):
        raise ValueError(f"not a protocol message (a JSON object): {str(frame)[:200]}")
    return msg


def dump(model: BaseModel) -> Message:
    """A protocol model as the dict sent on the wire (``None`` fields left out)."""
    return model.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------- login


def account(private_key: LocalAccount | str | bytes | int) -> LocalAccount:
    """The eth-account ``LocalAccount`` of a key (hex string, bytes, or already an account)."""
    if isinstance(private_key, LocalAccount):
        return private_key
    acct: LocalAccount = Account.from_key(private_key)
    return acct


def read_hello(msg: Message | str | bytes) -> Hello:
    """The server's first message (``hello``: market id, login challenge, EIP-712 domain)."""
    return Hello.model_validate(decode(msg) if isinstance(msg, str | bytes) else msg)


def login(request_id: RequestId, hello: Hello, acct: LocalAccount) -> Message:
    """The ``login`` request: a Sign-In with Ethereum (EIP-4361) message built from the hello's
    ``siwe`` offer for the member's address, signed by the member (EIP-191). A server that
    offers none (older) gets the deprecated answer: its challenge signed, with the address."""
    if hello.siwe is not None:
        text = siwe.from_offer(hello.siwe.model_dump(), acct.address).text()
        return dump(P.Login(type="login", id=request_id, message=text, signature=auth.sign_login(text, acct.key)))
    return dump(P.Login(type="login", id=request_id, address=acct.address,
                        signature=auth.sign_login(hello.challenge, acct.key)))


# --------------------------------------------------------------------------- signed orders


class Nonces:
    """EIP-712 order nonces of one member: last + 1 and, unless ``start`` is given, at least
    the current time in µs, so that a restarted program stays above the nonces it used before
    (the exchange refuses a nonce that is not above the member's last one)."""

    def __init__(self, start: int | None = None) -> None:
        self.last = (start - 1) if start is not None else 0
        self._from_clock = start is None

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000 if self._from_clock else 0)
        return self.last


class OrderSigner:
    """Signs a member's orders on the market of ``hello`` (EIP-712), each with the next nonce."""

    def __init__(self, acct: LocalAccount, hello: Hello, nonces: Nonces) -> None:
        self.account = acct
        self.market_id = hello.market_id
        self.chain_id = int(hello.eip712_domain["chainId"])
        self.nonces = nonces

    def sign(self, *, product_id: str, side: str, price: int, quantity: int, tif: str,
             client_order_id: str | None, post_only: bool = False, expire_time: datetime | None = None,
             min_quantity: int | None = None) -> dict[str, Any]:
        """The ``signature`` and ``nonce`` fields of a ``place`` with these order fields."""
        nonce = self.nonces.next()
        typed = auth.order_typed_data(self.market_id, self.chain_id, product_id=product_id, side=side, price=price,
                                      quantity=quantity, tif=tif, client_order_id=client_order_id, nonce=nonce,
                                      post_only=post_only, min_quantity=min_quantity,
                                      expire_time=None if expire_time is None else int(expire_time.timestamp()))
        return {"signature": auth.sign_order(typed, self.account.key), "nonce": nonce}

    def sign_block(self, *, product_ids: list[str], side: str, price: int, quantity: int,
                   client_order_id: str | None) -> dict[str, Any]:
        """The ``signature`` and ``nonce`` fields of a ``place_block``."""
        nonce = self.nonces.next()
        typed = auth.block_order_typed_data(self.market_id, self.chain_id, product_ids=product_ids, side=side,
                                            price=price, quantity=quantity, client_order_id=client_order_id,
                                            nonce=nonce)
        return {"signature": auth.sign_order(typed, self.account.key), "nonce": nonce}


# --------------------------------------------------------------------------- requests


def place(request_id: RequestId, product_id: str, side: str, price: int, quantity: int, tif: str = "gtc", *,
          client_order_id: str | None = None, signer: OrderSigner | None = None, post_only: bool = False,
          expire_time: datetime | None = None, min_quantity: int | None = None) -> Message:
    """A limit order (price in ticks of 0.01 EUR/MWh, quantity in Wh); signed with ``signer``.
    Conditions: ``post_only`` (gtc), ``expire_time`` (gtc, aware, whole seconds), ``min_quantity`` (ioc)."""
    fields: dict[str, Any] = dict(product_id=product_id, side=side, price=price, quantity=quantity, tif=tif,
                                  client_order_id=client_order_id)
    conditions: dict[str, Any] = {k: v for k, v in (("post_only", post_only), ("expire_time", expire_time),
                                                    ("min_quantity", min_quantity)) if v}
    if signer is not None:
        fields.update(signer.sign(**fields, **conditions))
    msg = dump(P.Place(type="place", id=request_id, **fields, **conditions))
    if not post_only:
        msg.pop("post_only", None)  # the default: a plain order looks as it always did
    return msg


def place_block(request_id: RequestId, product_ids: list[str], side: str, price: int, quantity: int, *,
                client_order_id: str | None = None, signer: OrderSigner | None = None) -> Message:
    """A block order: ``quantity`` Wh in each of the consecutive ``product_ids``, all or none,
    ``price`` a limit on their average clearing price (day-ahead auction only)."""
    fields: dict[str, Any] = dict(product_ids=list(product_ids), side=side, price=price, quantity=quantity,
                                  client_order_id=client_order_id)
    if signer is not None:
        fields.update(signer.sign_block(**fields))
    return dump(P.PlaceBlock(type="place_block", id=request_id, **fields))


def cancel(request_id: RequestId, order_id: int) -> Message:
    return dump(P.Cancel(type="cancel", id=request_id, order_id=order_id))


def modify(request_id: RequestId, order_id: int, *, price: int | None = None, quantity: int | None = None) -> Message:
    return dump(P.Modify(type="modify", id=request_id, order_id=order_id, price=price, quantity=quantity))


def cancel_all(request_id: RequestId, product_id: str | None = None) -> Message:
    return dump(P.CancelAll(type="cancel_all", id=request_id, product_id=product_id))


def orders(request_id: RequestId, product_id: str | None = None,
           status: Literal["open", "closed", "all"] = "open") -> Message:
    msg = dump(P.Orders(type="orders", id=request_id, product_id=product_id, status=status))
    if status == "open":
        del msg["status"]  # the default: the request as servers before order status knew it
    return msg


def order_status(request_id: RequestId, order_id: int | None = None, client_order_id: str | None = None) -> Message:
    """One of my orders by ``order_id`` or ``client_order_id`` (exactly one of the two)."""
    return dump(P.OrderStatus(type="order_status", id=request_id, order_id=order_id, client_order_id=client_order_id))


def trades(request_id: RequestId, product_id: str | None = None, after: int = 0, limit: int = 100) -> Message:
    return dump(P.Trades(type="trades", id=request_id, product_id=product_id, after=after, limit=limit))


def positions(request_id: RequestId, product_id: str | None = None, *, delivered: bool = False,
              after_product: str | None = None, limit: int | None = None) -> Message:
    fields: dict[str, Any] = {k: v for k, v in (("product_id", product_id), ("after_product", after_product),
                                                ("limit", limit)) if v is not None}
    msg = dump(P.Positions(type="positions", id=request_id, delivered=delivered, **fields))
    if not delivered:
        msg.pop("delivered", None)
    if limit is None:
        msg.pop("limit", None)
    return msg


def ping(request_id: RequestId) -> Message:
    return dump(P.Ping(type="ping", id=request_id))


def subscribe(request_id: RequestId, channel: Channel, product_id: str | None = None, *,
              from_seq: int | None = None) -> Message:
    """``channel``: ``book`` (of ``product_id``), ``trades`` (of one product or all), ``products``.
    ``from_seq`` (book): the seq of the book held; the server replays the deltas since (the answer's
    ``replayed``: how many follow) or, when they are no longer kept (``replayed: null``), sends a
    snapshot."""
    return dump(P.Subscribe(type="subscribe", id=request_id, channel=channel, product_id=product_id,
                            from_seq=from_seq))


def unsubscribe(request_id: RequestId, channel: Channel, product_id: str | None = None) -> Message:
    return dump(P.Unsubscribe(type="unsubscribe", id=request_id, channel=channel, product_id=product_id))


# --------------------------------------------------------------------------- answers


def is_answer(msg: Message) -> bool:
    """A ``response`` or an ``error`` (the answer to a request, by ``id``; an error without
    one is unsolicited); anything else is a push."""
    return msg.get("type") in ("response", "error")


def answer_id(msg: Message) -> RequestId | None:
    """The ``id`` of the request an answer is for (None: not an answer, or an unsolicited error)."""
    rid = msg.get("id") if is_answer(msg) else None
    return rid if isinstance(rid, int | str) else None


def result_of(msg: Message, request: Message | None = None) -> Any:
    """The ``result`` of a ``response``; an ``error`` raises its :class:`~clients.sdk.errors.RequestError`
    subclass (carrying ``code``, ``message`` and ``request``)."""
    if msg.get("type") == "error":
        raise error_for(msg.get("code", "?"), msg.get("message", ""), msg.get("id"), request)
    return msg.get("result")


def order_result(result: Any, request: Message) -> OrderResult:
    """Parse an order outcome (of ``place`` / ``modify``); an answer without one (seen when a
    calendar transition was applied in the same command: the server then answers ``{"seq": n}``)
    is reported as :class:`~clients.sdk.errors.OutcomeUnknown`, so a ``client_order_id`` resend
    settles it."""
    if not isinstance(result, dict) or "order_id" not in result:
        raise OutcomeUnknown(f"the exchange answered without an order outcome ({result!r}); the order may or "
                             "may not exist: resend with the same client_order_id or check orders()", request)
    return OrderResult.model_validate(result)
