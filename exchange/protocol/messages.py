"""The peer WebSocket protocol: every message a peer can send, as pydantic models.

Messages are JSON objects with a ``type``. Requests carry an ``id`` (a string
of 1-64 characters or a non-negative integer) that the one response to it
echoes. Numbers are integers: energy in Wh, prices in ticks of 0.01 EUR/MWh;
a float, a boolean or a string where an integer belongs is refused.
``docs/websocket.md`` describes the protocol; ``docs/ws-schema.json`` (also
served at ``/api/schema/ws``) is generated from these models.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from exchange.protocol.frames import NUL_MESSAGE, json_nul_location, read_request_id
from exchange.protocol.types import UtcTime

PROTOCOL_VERSION = 1
MAX_INT = 2**53 - 1  # exact in every JSON implementation

RequestId = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[int, Field(ge=0, le=MAX_INT)]
ProductId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[0-9A-Za-z:_\-]+$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="Ethereum address")]
Signature = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65-byte secp256k1 signature, hex")]
Price = Annotated[int, Field(ge=-(10**9), le=10**9, description="ticks of 0.01 EUR/MWh")]
Quantity = Annotated[int, Field(ge=1, le=10**12, description="Wh")]
OrderId = Annotated[int, Field(ge=1, le=MAX_INT)]
ClientOrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z._:\-]+$")]


class Request(BaseModel):
    """Base of every peer request (subsystems subclass it): strict, frozen, with an ``id``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: RequestId


class Login(Request):
    """Sign in: ``message``, a Sign-In with Ethereum (EIP-4361) message built from the
    hello's ``siwe`` offer (its domain, URI, chain id, nonce, times) with the member's
    address, and ``signature``, its EIP-191 (personal_sign) signature by the member's key.
    DEPRECATED (one more version): ``address`` and the ``signature`` of the hello's
    ``challenge`` text, without ``message``."""

    type: Literal["login"]
    message: str | None = Field(None, min_length=1, max_length=4096,
                                description="the EIP-4361 message signed (LF line ends, none at the end)")
    address: Address | None = Field(None, description="required without message (the deprecated challenge "
                                    "login); with message, if given, it must be the message's address")
    signature: Signature

    @model_validator(mode="after")
    def _message_or_address(self) -> Login:
        if self.message is None and self.address is None:
            raise ValueError("give message (Sign-In with Ethereum) or, deprecated, address with the challenge's "
                             "signature")
        return self


class Place(Request):
    """Place an order. With ``signature`` (EIP-712, see docs) ``nonce`` is required and
    must exceed the member's last nonce."""

    type: Literal["place"]
    product_id: ProductId
    side: Literal["buy", "sell"]
    price: Price
    quantity: Quantity
    tif: Literal["gtc", "ioc", "fok"] = "gtc"
    client_order_id: ClientOrderId | None = None
    signature: Signature | None = None
    nonce: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None
    post_only: bool = Field(False, description="gtc only: refused (POST_ONLY_WOULD_TRADE) rather than trade on arrival")
    expire_time: UtcTime | None = Field(None, description="good till date (gtc only, whole seconds): the order "
                                        "expires then if it still rests")
    min_quantity: Quantity | None = Field(None, description="ioc only: trade only if at least this much trades at once")

    @model_validator(mode="after")
    def _signed_needs_nonce(self) -> Place:
        if (self.signature is None) != (self.nonce is None):
            raise ValueError("signature and nonce go together")
        if self.expire_time is not None and self.expire_time.microsecond:
            raise ValueError("expire_time: whole seconds (it is signed as Unix seconds)")
        return self


class PlaceBlock(Request):
    """A block order: ``quantity`` Wh in each of 2-24 consecutive products of one delivery
    day, all or none, ``price`` a limit on their average clearing price; it takes part in
    the day-ahead (call) auction only."""

    type: Literal["place_block"]
    product_ids: list[ProductId] = Field(min_length=2, max_length=24)
    side: Literal["buy", "sell"]
    price: Price
    quantity: Quantity
    client_order_id: ClientOrderId | None = None
    signature: Signature | None = None
    nonce: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None

    @model_validator(mode="after")
    def _signed_needs_nonce(self) -> PlaceBlock:
        if (self.signature is None) != (self.nonce is None):
            raise ValueError("signature and nonce go together")
        return self


def _one_order_ref(order_id: int | None, client_order_id: str | None) -> None:
    if (order_id is None) == (client_order_id is None):
        raise ValueError("give order_id or client_order_id (one of them)")


class Cancel(Request):
    """Cancel one of my open orders, named by ``order_id`` or by my ``client_order_id``."""

    type: Literal["cancel"]
    order_id: OrderId | None = None
    client_order_id: ClientOrderId | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> Cancel:
        _one_order_ref(self.order_id, self.client_order_id)
        return self


class Modify(Request):
    """New price and/or new remaining quantity of one of my open orders (by ``order_id`` or
    ``client_order_id``): quantity down keeps time priority."""

    type: Literal["modify"]
    order_id: OrderId | None = None
    client_order_id: ClientOrderId | None = None
    price: Price | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _something(self) -> Modify:
        _one_order_ref(self.order_id, self.client_order_id)
        if self.price is None and self.quantity is None:
            raise ValueError("give a new price, a new quantity, or both")
        return self


class CancelAll(Request):
    type: Literal["cancel_all"]
    product_id: ProductId | None = None


class Orders(Request):
    """My orders (optionally of one product): ``open`` (the default: my orders in the book),
    ``closed`` (filled, cancelled or expired, of products not yet delivered; the last 1000 per
    member) or ``all``. Closed and all list each order as ``order_status`` answers it, without
    its fills."""

    type: Literal["orders"]
    product_id: ProductId | None = None
    status: Literal["open", "closed", "all"] = "open"


class OrderStatus(Request):
    """One of my orders, open or closed, by ``order_id`` or by my ``client_order_id`` (one of
    the two): quantity as placed, remaining, filled, status (``open``, ``filled``, ``cancelled``
    with its ``reason``, ``expired``), its fills, seq and time of its last change. Known until
    its product is delivered (closed ones: the last 1000 per member); otherwise, and for
    another member's order, ``UNKNOWN_ORDER``."""

    type: Literal["order_status"]
    order_id: OrderId | None = None
    client_order_id: ClientOrderId | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> OrderStatus:
        _one_order_ref(self.order_id, self.client_order_id)
        return self


class Trades(Request):
    """My trades, by sequence number."""

    type: Literal["trades"]
    product_id: ProductId | None = None
    after: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class Positions(Request):
    """My position per product (bought, sold, net Wh; payable money): by default the
    products not delivered yet (bounded by the market's calendar, whatever the history);
    with ``delivered`` true, every product in product-id order, a page of ``limit`` after
    ``after_product``."""

    type: Literal["positions"]
    product_id: ProductId | None = None
    delivered: bool = False
    after_product: ProductId | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 1000


class Subscribe(Request):
    """``book`` (needs product_id): snapshot, then deltas; with ``depth``, only the best
    ``depth`` levels per side, as a fresh ``book_snapshot`` after each change (no deltas);
    ``trades``: public trades of one product or all; ``products``: product and market state
    changes."""

    type: Literal["subscribe"]
    channel: Literal["book", "trades", "products"]
    product_id: ProductId | None = None
    depth: Annotated[int, Field(ge=1, le=100)] | None = None
    from_seq: Annotated[int, Field(ge=0, le=MAX_INT)] | None = Field(
        None, description="book (full depth): the seq of the book you hold; the deltas since are replayed "
        "instead of a snapshot while they are kept (the last 256 per product)")

    @model_validator(mode="after")
    def _book_needs_product(self) -> Subscribe:
        if self.channel == "book" and self.product_id is None:
            raise ValueError("the book channel needs a product_id")
        if self.depth is not None and self.channel != "book":
            raise ValueError("depth is for the book channel")
        if self.from_seq is not None and (self.channel != "book" or self.depth is not None):
            raise ValueError("from_seq is for the full-depth book channel")
        return self


class Unsubscribe(Request):
    type: Literal["unsubscribe"]
    channel: Literal["book", "trades", "products"]
    product_id: ProductId | None = None


class Ping(Request):
    type: Literal["ping"]


class SessionOptions(Request):
    """Options of this session; each given field changes, the answer has them all.
    ``cancel_on_disconnect``: when this session ends without a clean close by the server
    (the connection drops, the client closes it), all my open orders are cancelled."""

    type: Literal["session_options"]
    cancel_on_disconnect: bool | None = None


class DeadMan(Request):
    """A dead man's switch: unless this request is sent again within ``timeout_s`` seconds,
    all my open orders are cancelled (a ``dead_man_triggered`` message says so). Each request
    re-arms it; ``timeout_s`` 0 disarms it. It ends with the session (see cancel_on_disconnect)."""

    type: Literal["dead_man"]
    timeout_s: Annotated[int, Field(ge=0, le=3600)]


class Replay(Request):
    """Re-send my private reports (``execution``) from ``pseq`` on, to this session: the recent
    ones are kept (a bounded window); older ones answer ``REPLAY_UNAVAILABLE``: then rebuild from
    ``orders`` and ``positions`` (a snapshot) and follow the stream from the ``pseq`` they name."""

    type: Literal["replay"]
    from_pseq: Annotated[int, Field(ge=1, le=MAX_INT)]


CORE_REQUESTS: tuple[type[Request], ...] = (Login, Place, PlaceBlock, Cancel, Modify, CancelAll, Orders, OrderStatus, Trades,
                                             Positions, Subscribe, Unsubscribe, Ping, SessionOptions, DeadMan, Replay)


class ProtocolError(Exception):
    """A message that cannot be processed: answered with ``code`` and ``message``."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id



# --------------------------------------------------------------------------- server messages
# Built as plain dicts on the hot path; these models document them and generate the schema.


class Push(BaseModel):
    """Base of every server-to-peer message model (documentation and schema)."""

    model_config = ConfigDict(extra="forbid")


class SiweOffer(BaseModel):
    """What the server expects in a Sign-In with Ethereum (EIP-4361) login on this connection:
    build the message from these fields and your address (docs/websocket.md)."""

    model_config = ConfigDict(extra="forbid")
    domain: str = Field(description="the Host the WebSocket was opened to")
    uri: str = Field(description="the endpoint the WebSocket was opened at: ws://HOST/ws, or ws://HOST/m/{market}/ws "
                     "for a hosted market (wss:// over TLS); a login must sign exactly this URI's host and path")
    chain_id: int
    version: Literal["1"]
    statement: str
    nonce: str = Field(description="single use, for this connection only")
    issued_at: str = Field(description="RFC 3339 UTC")
    expiration_time: str = Field(description="RFC 3339 UTC: the nonce is refused after it")


class Hello(Push):
    type: Literal["hello"]
    protocol: int
    market_id: str
    challenge: str = Field(description="DEPRECATED (use siwe): text to sign with EIP-191 personal_sign, then send "
                           "`login` with address and signature")
    siwe: SiweOffer | None = Field(None, description="the Sign-In with Ethereum offer of this connection (absent when "
                                   "the connection is already signed in)")
    member: str | None = Field(None, description="set when the connection is already signed in (a member portal "
                               "session cookie): no login needed, a login is refused")
    auth: Literal["portal"] | None = Field(None, description="how the connection is signed in when member is set")
    pseq: int | None = Field(None, description="with member: my private stream's current sequence (as login answers)")
    pstream: str | None = Field(None, description="with member: the id of the server's run of pseq")
    server_time: str = Field(description="the server's wall clock, ISO 8601 UTC with Z")
    market_time: str | None = Field(None, description="the market's clock (simulated when SIM_SPEED > 1), ISO 8601 UTC with Z: "
                                         "what products' open/gate/delivery times and every ts are in")
    eip712_domain: dict[str, Any]


class Response(Push):
    type: Literal["response"]
    id: RequestId
    result: dict[str, Any] | list[Any]


class Error(Push):
    type: Literal["error"]
    id: RequestId | None
    code: str
    message: str
    retry_after_ms: int | None = Field(None, description="RATE_LIMITED: when the next message will be accepted")


class Execution(Push):
    """A private report on one of my orders."""

    type: Literal["execution"]
    exec: Literal["accepted", "fill", "cancelled", "expired", "modified", "rejected", "block_accepted", "block_result"]
    pseq: int | None = Field(None, description="my private stream's sequence number: 1, 2, 3 ... (a gap: replay); "
                             "always sent by this server")
    seq: int
    ts: str
    order_id: int | None = Field(description="null only for a rejected place or place_block (it made no order)")
    product_id: str | None = Field(None, description="null only for a rejection")
    client_order_id: str | None = None
    side: Literal["buy", "sell"] | None = None
    price: int | None = None
    quantity: int | None = Field(None, description="fill: traded Wh; accepted/modified: order quantity")
    remaining: int | None = None
    trade_id: int | None = None
    liquidity: Literal["maker", "taker", "auction"] | None = None
    counterparty: str | None = Field(None, description="null unless the market discloses counterparties")
    reason: str | None = None
    detail: str | None = Field(None, description="rejected: why, in words")
    command: str | None = Field(None, description="rejected: place, modify or cancel")
    priority_kept: bool | None = None
    product_ids: list[str] | None = Field(None, description="block_accepted: the block's hours")
    executed: bool | None = Field(None, description="block_result: executed in every hour, or not at all")
    prices: list[int | None] | None = Field(None, description="block_result: each hour's clearing price")


class BookSnapshot(Push):
    type: Literal["book_snapshot"]
    product_id: str
    seq: int = Field(description="apply later deltas whose prev_seq equals this")
    bids: list[tuple[int, int, int]] = Field(description="[price, volume Wh, orders], best first")
    asks: list[tuple[int, int, int]]


class BookDelta(Push):
    type: Literal["book"]
    product_id: str
    seq: int
    prev_seq: int = Field(description="seq of the previous book message of this product; a mismatch is a gap")
    changes: list[tuple[Literal["buy", "sell"], int, int, int]] = Field(
        description="[side, price, volume Wh (0: level gone), orders]")


class PublicTrade(Push):
    type: Literal["trade"]
    product_id: str
    trade_id: int
    price: int
    quantity: int
    aggressor: Literal["buy", "sell", "auction"]
    seq: int
    ts: str


class ProductState(Push):
    type: Literal["product_state"]
    product_id: str
    state: Literal["pre_open", "open", "auction", "closed", "delivered"]
    seq: int
    ts: str


class VolatilityInterruptionPush(Push):
    """Continuous trading of a product stopped before a trade at ``price`` (outside the
    volatility range around ``reference``, the last trade price): orders rest until the
    volatility auction clears at ``until``, then the product is open again."""

    type: Literal["volatility_interruption"]
    product_id: str
    price: int
    reference: int | None
    until: str
    seq: int
    ts: str


class MarketState(Push):
    type: Literal["market_state"]
    halted: bool
    reason: str
    seq: int
    ts: str


class DeadManTriggered(Push):
    """My dead man's switch ran out: all my open orders are being cancelled."""

    type: Literal["dead_man_triggered"]
    ts: str


CORE_PUSHES: tuple[type[Push], ...] = (Hello, Response, Error, Execution, BookSnapshot, BookDelta, PublicTrade,
                                       ProductState, VolatilityInterruptionPush, MarketState, DeadManTriggered)


def message_type(model: type[BaseModel]) -> str:
    """The ``type`` tag of a message model (its ``Literal``)."""
    tag = typing.get_args(model.model_fields["type"].annotation)[0]
    if not isinstance(tag, str):
        raise TypeError(f"{model.__name__}.type must be a Literal of the message's type tag")
    return tag


class WireProtocol:
    """The peer protocol of one gateway: the core messages plus every subsystem's,
    as one discriminated union. ``parse`` validates a frame; ``json_schema`` is
    ``docs/ws-schema.json`` (also served at ``/api/schema/ws``)."""

    def __init__(self, requests: Sequence[type[Request]] = CORE_REQUESTS,
                 pushes: Sequence[type[Push]] = CORE_PUSHES) -> None:
        self.requests = tuple(requests)
        self.pushes = tuple(pushes)
        self.types = tuple(message_type(m) for m in self.requests)
        dup = {t for t in self.types if self.types.count(t) > 1}
        if dup:
            raise ValueError(f"message types registered twice: {sorted(dup)}")
        # The unions are built at run time from the registered models: no static type to give them.
        self.adapter: TypeAdapter[Any] = TypeAdapter(
            Annotated[Union[self.requests], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007 - a runtime tuple
        self.server_adapter: TypeAdapter[Any] = TypeAdapter(
            Annotated[Union[self.pushes], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007

    def parse(self, raw: str | bytes) -> Any:
        """Validate one frame; raises :class:`ProtocolError` with a precise code and message."""
        nul = json_nul_location(raw)
        if nul is not None:
            raise ProtocolError("INVALID_MESSAGE", f"{'.'.join(map(str, nul)) or 'message'}: {NUL_MESSAGE}",
                                read_request_id(raw))
        try:
            return self.adapter.validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            kinds = {e["type"] for e in errors}
            rid = read_request_id(raw)
            if "json_invalid" in kinds or "json_type" in kinds:
                raise ProtocolError("MALFORMED_JSON", "the frame is not a JSON object", rid) from None
            if kinds & {"union_tag_invalid", "union_tag_not_found"}:
                err = errors[0]
                if err["type"] == "union_tag_not_found":
                    raise ProtocolError("INVALID_MESSAGE", "missing field 'type'", rid) from None
                tag = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
                raise ProtocolError("UNKNOWN_TYPE", f"unknown message type {tag!r}; expected one of "
                                    + ", ".join(self.types), rid) from None
            parts = []
            for e in errors[:5]:
                loc = ".".join(str(x) for x in e["loc"][1:]) or "message"
                parts.append(f"{loc}: {e['msg']}")
            raise ProtocolError("INVALID_MESSAGE", "; ".join(parts), rid) from None

    def json_schema(self) -> dict[str, Any]:
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Voltbourse peer WebSocket protocol",
            "version": PROTOCOL_VERSION,
            "client_to_server": self.adapter.json_schema(),
            "server_to_client": self.server_adapter.json_schema(),
        }
