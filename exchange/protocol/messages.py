"""The peer WebSocket protocol: every message a peer can send, as pydantic models.

Messages are JSON objects with a ``type``. Requests carry an ``id`` (a string
of 1-64 characters or a non-negative integer) that the one response to it
echoes. Numbers are integers: energy in Wh, prices in ticks of 0.01 EUR/MWh;
a float, a boolean or a string where an integer belongs is refused.
``docs/websocket.md`` describes the protocol; ``docs/ws-schema.json`` (also
served at ``/api/schema/ws``) is generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

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


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: RequestId


class Login(_Msg):
    """Answer the server's ``hello`` challenge: an EIP-191 (personal_sign) signature of
    the challenge text by the member's key."""

    type: Literal["login"]
    address: Address
    signature: Signature


class Place(_Msg):
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

    @model_validator(mode="after")
    def _signed_needs_nonce(self) -> Place:
        if (self.signature is None) != (self.nonce is None):
            raise ValueError("signature and nonce go together")
        return self


class Cancel(_Msg):
    type: Literal["cancel"]
    order_id: OrderId


class Modify(_Msg):
    """New price and/or new remaining quantity: quantity down keeps time priority."""

    type: Literal["modify"]
    order_id: OrderId
    price: Price | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _something(self) -> Modify:
        if self.price is None and self.quantity is None:
            raise ValueError("give a new price, a new quantity, or both")
        return self


class CancelAll(_Msg):
    type: Literal["cancel_all"]
    product_id: ProductId | None = None


class Orders(_Msg):
    """My open orders (optionally of one product)."""

    type: Literal["orders"]
    product_id: ProductId | None = None


class Trades(_Msg):
    """My trades, by sequence number."""

    type: Literal["trades"]
    product_id: ProductId | None = None
    after: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class Positions(_Msg):
    """My position per product (bought, sold, net Wh; payable money)."""

    type: Literal["positions"]


class Subscribe(_Msg):
    """``book`` (needs product_id): snapshot, then deltas; ``trades``: public trades of
    one product or all; ``products``: product and market state changes."""

    type: Literal["subscribe"]
    channel: Literal["book", "trades", "products"]
    product_id: ProductId | None = None

    @model_validator(mode="after")
    def _book_needs_product(self) -> Subscribe:
        if self.channel == "book" and self.product_id is None:
            raise ValueError("the book channel needs a product_id")
        return self


class Unsubscribe(_Msg):
    type: Literal["unsubscribe"]
    channel: Literal["book", "trades", "products"]
    product_id: ProductId | None = None


class Ping(_Msg):
    type: Literal["ping"]


class TradeProof(_Msg):
    """The Merkle inclusion proof of one of the member's own trades, once its batch is
    anchored on chain (see docs/settlement.md for the leaf encoding)."""

    type: Literal["trade_proof"]
    trade_id: Annotated[int, Field(ge=1, le=MAX_INT)]


# --- flexibility (exchange/flexibility, docs/flexibility.md)
FlexTime = Annotated[AwareDatetime, Field(description="ISO 8601 with offset, e.g. 2026-11-22T17:00:00Z")]
EnergyWh = Annotated[int, Field(ge=0, le=10**12, description="Wh")]


class FlexOffer(_Msg):
    """Offer flexibility for a delivery period: ``up`` = consume less / produce more.
    Give at most one of ``energy_wh`` (limit over the period) and ``duration_minutes``
    (energy = power x duration); neither: power over the whole period."""

    type: Literal["flex_offer"]
    period_start: FlexTime
    period_minutes: Annotated[int, Field(ge=15, le=1440, multiple_of=15)] = 60
    direction: Literal["up", "down"]
    power_w: Annotated[int, Field(ge=1, le=10**9, description="W")]
    energy_wh: Annotated[int, Field(ge=1, le=10**12)] | None = None
    duration_minutes: Annotated[int, Field(ge=1, le=1440)] | None = None
    price: Annotated[int, Field(ge=0, le=10**9, description="ticks of 0.01 EUR/MWh asked for activated energy")]
    kind: Literal["reduction", "shift"] = "reduction"

    @model_validator(mode="after")
    def _one_limit(self) -> FlexOffer:
        if self.energy_wh is not None and self.duration_minutes is not None:
            raise ValueError("give energy_wh or duration_minutes, not both")
        return self


class FlexOfferCancel(_Msg):
    type: Literal["flex_offer_cancel"]
    offer_id: Annotated[int, Field(ge=1, le=MAX_INT)]


class FlexBaselineSlot(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    start: FlexTime
    consumption_wh: EnergyWh
    generation_wh: EnergyWh = 0


class FlexBaseline(_Msg):
    """Forecast consumption/generation per 15-minute slot (Wh)."""

    type: Literal["flex_baseline"]
    slots: Annotated[list[FlexBaselineSlot], Field(min_length=1, max_length=192)]


class FlexMeterReading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    interval_start: FlexTime
    consumption_wh: EnergyWh
    generation_wh: EnergyWh = 0


class FlexMeter(_Msg):
    """Metered consumption/generation per 10-minute interval (Wh)."""

    type: Literal["flex_meter"]
    readings: Annotated[list[FlexMeterReading], Field(min_length=1, max_length=144)]


class FlexRespond(_Msg):
    """Accept or decline a ``flex_invitation``."""

    type: Literal["flex_respond"]
    invitation_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    accept: bool


class FlexStatus(_Msg):
    """My offers, invitations, dispatch instructions, delivery checks and payouts."""

    type: Literal["flex_status"]


ClientMessage = Annotated[
    Login | Place | Cancel | Modify | CancelAll | Orders | Trades | Positions | Subscribe | Unsubscribe | Ping
    | TradeProof | FlexOffer | FlexOfferCancel | FlexBaseline | FlexMeter | FlexRespond | FlexStatus,
    Field(discriminator="type"),
]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)
MESSAGE_TYPES = ("login", "place", "cancel", "modify", "cancel_all", "orders", "trades", "positions", "subscribe",
                 "unsubscribe", "ping", "trade_proof", "flex_offer", "flex_offer_cancel", "flex_baseline",
                 "flex_meter", "flex_respond", "flex_status")


class ProtocolError(Exception):
    """A message that cannot be processed: answered with ``code`` and ``message``."""

    def __init__(self, code: str, message: str, request_id=None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _request_id(raw: str | bytes):
    """Best effort: the ``id`` of a message that failed validation, to echo it."""
    import orjson

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if (isinstance(rid, str) and 0 < len(rid) <= 64) or (type(rid) is int and 0 <= rid <= MAX_INT):
            return rid
    return None


def parse(raw: str | bytes):
    """Validate one frame; raises :class:`ProtocolError` with a precise code and message."""
    try:
        return CLIENT_MESSAGE.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        kinds = {e["type"] for e in errors}
        rid = _request_id(raw)
        if "json_invalid" in kinds or "json_type" in kinds:
            raise ProtocolError("MALFORMED_JSON", "the frame is not a JSON object", rid) from None
        if kinds & {"union_tag_invalid", "union_tag_not_found"}:
            err = errors[0]
            if err["type"] == "union_tag_not_found":
                raise ProtocolError("INVALID_MESSAGE", "missing field 'type'", rid) from None
            tag = err.get("input", {}).get("type") if isinstance(err.get("input"), dict) else None
            raise ProtocolError("UNKNOWN_TYPE", f"unknown message type {tag!r}; expected one of "
                                + ", ".join(MESSAGE_TYPES), rid) from None
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(x) for x in e["loc"][1:]) or "message"
            parts.append(f"{loc}: {e['msg']}")
        raise ProtocolError("INVALID_MESSAGE", "; ".join(parts), rid) from None


# --------------------------------------------------------------------------- server messages
# Built as plain dicts on the hot path; these models document them and generate the schema.


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hello(_Out):
    type: Literal["hello"]
    protocol: int
    market_id: str
    challenge: str = Field(description="text to sign with EIP-191 personal_sign, then send `login`")
    server_time: str
    eip712_domain: dict


class Response(_Out):
    type: Literal["response"]
    id: RequestId
    result: dict | list


class Error(_Out):
    type: Literal["error"]
    id: RequestId | None
    code: str
    message: str


class Execution(_Out):
    """A private report on one of my orders."""

    type: Literal["execution"]
    exec: Literal["accepted", "fill", "cancelled", "expired", "modified"]
    seq: int
    ts: str
    order_id: int
    product_id: str
    client_order_id: str | None = None
    side: Literal["buy", "sell"] | None = None
    price: int | None = None
    quantity: int | None = Field(None, description="fill: traded Wh; accepted/modified: order quantity")
    remaining: int | None = None
    trade_id: int | None = None
    liquidity: Literal["maker", "taker", "auction"] | None = None
    counterparty: str | None = Field(None, description="null unless the market discloses counterparties")
    reason: str | None = None
    priority_kept: bool | None = None


class BookSnapshot(_Out):
    type: Literal["book_snapshot"]
    product_id: str
    seq: int = Field(description="apply later deltas whose prev_seq equals this")
    bids: list[tuple[int, int, int]] = Field(description="[price, volume Wh, orders], best first")
    asks: list[tuple[int, int, int]]


class BookDelta(_Out):
    type: Literal["book"]
    product_id: str
    seq: int
    prev_seq: int = Field(description="seq of the previous book message of this product; a mismatch is a gap")
    changes: list[tuple[Literal["buy", "sell"], int, int, int]] = Field(
        description="[side, price, volume Wh (0: level gone), orders]")


class PublicTrade(_Out):
    type: Literal["trade"]
    product_id: str
    trade_id: int
    price: int
    quantity: int
    aggressor: Literal["buy", "sell", "auction"]
    seq: int
    ts: str


class ProductState(_Out):
    type: Literal["product_state"]
    product_id: str
    state: Literal["pre_open", "open", "closed", "delivered"]
    seq: int
    ts: str


class MarketState(_Out):
    type: Literal["market_state"]
    halted: bool
    reason: str
    seq: int
    ts: str


class FlexInvitationOut(_Out):
    """Invited to a demand-response event with one of my offers: answer with ``flex_respond``."""

    type: Literal["flex_invitation"]
    event_id: int
    invitation_id: int
    offer_id: int
    direction: Literal["up", "down"]
    period_start: str
    period_end: str
    power_w: int
    respond_by: str
    reserve: bool = Field(description="a reserve call during an event: accepting dispatches at once")
    rank: int


class FlexEventOut(_Out):
    type: Literal["flex_event"]
    event_id: int
    phase: str
    reason: str


class FlexDispatchOut(_Out):
    """Dispatch instruction: change my power by ``power_w`` in ``direction`` from ``start`` to ``end``."""

    type: Literal["flex_dispatch"]
    event_id: int
    instruction_id: int
    offer_id: int
    bid_id: int | None
    direction: Literal["up", "down"]
    power_w: int
    start: str
    end: str
    energy_wh: int
    reserve: bool


class FlexDeliveryOut(_Out):
    """The 10-minute delivery check of one interval (baseline minus metered, Wh)."""

    type: Literal["flex_delivery"]
    event_id: int
    member: str
    interval_start: str
    interval_end: str
    required_wh: int
    baseline_wh: int
    metered_wh: int | None
    delivered_wh: int
    shortfall_wh: int
    over_wh: int


class FlexPayoutOut(_Out):
    """My share of an event's revenue (money units of 1e-8 EUR); settled on chain later."""

    type: Literal["flex_payout"]
    event_id: int
    delivered_wh: int
    share: int
    penalty: int
    payout: int


ServerMessage = Annotated[
    Hello | Response | Error | Execution | BookSnapshot | BookDelta | PublicTrade | ProductState | MarketState
    | FlexInvitationOut | FlexEventOut | FlexDispatchOut | FlexDeliveryOut | FlexPayoutOut,
    Field(discriminator="type"),
]
SERVER_MESSAGE = TypeAdapter(ServerMessage)


def json_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Voltbourse peer WebSocket protocol",
        "version": PROTOCOL_VERSION,
        "client_to_server": CLIENT_MESSAGE.json_schema(),
        "server_to_client": SERVER_MESSAGE.json_schema(),
    }


if __name__ == "__main__":  # python -m exchange.protocol.messages > docs/ws-schema.json
    import json

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
