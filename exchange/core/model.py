"""Commands (the engine's only input) and events (its only output).

Both are plain slotted dataclasses with a ``type`` tag so they round-trip
through JSON for the journal: :func:`command_to_dict` / :func:`command_from_dict`
and :func:`event_to_dict` / :func:`event_from_dict`. Every command carries
``ts``, the time input in integer microseconds UTC.

Field types are the values' true types: enum fields hold the enum (``Side``,
``TimeInForce``, ``CancelReason``), in live events and in events decoded from
the journal alike. The enums are str-valued, so a dict from ``*_to_dict`` is
JSON-ready as it is and encodes them as their plain values.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from operator import attrgetter
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar, Union

from exchange.core.ids import MemberId as MemberId
from exchange.core.ids import OrderId as OrderId
from exchange.core.ids import ProductId as ProductId
from exchange.core.ids import TradeId as TradeId

#: A command or event as a JSON object (the journal's form).
JsonDict: TypeAlias = dict[str, Any]


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"


class TimeInForce(str, Enum):
    GTC = "gtc"  # good till gate closure: rests until filled, cancelled or expired at the gate
    IOC = "ioc"  # immediate or cancel: fill what it can now, cancel the rest
    FOK = "fok"  # fill or kill: fill completely now, or not at all


class SelfTradePrevention(str, Enum):
    CANCEL_NEWEST = "cancel_newest"  # the incoming order's remainder is cancelled
    CANCEL_OLDEST = "cancel_oldest"  # the resting order is cancelled, matching goes on
    CANCEL_BOTH = "cancel_both"
    ALLOW = "allow"


class Mechanism(str, Enum):
    CONTINUOUS = "continuous"  # continuous double auction, price-time priority
    CALL = "call"  # uniform-price call auction (pay-as-clear) at gate closure
    # day-ahead then intraday: orders collected from the product's opening are cleared by a
    # uniform-price call auction at the day-ahead time (D-1, gate_day_ahead_local_time), then
    # the product trades continuously, from what is left, until its rolling gate
    CALL_THEN_CONTINUOUS = "call_then_continuous"


class Reason(str, Enum):
    """Why a command was rejected. Each has a test."""

    MARKET_HALTED = "MARKET_HALTED"
    UNKNOWN_MEMBER = "UNKNOWN_MEMBER"
    MEMBER_SUSPENDED = "MEMBER_SUSPENDED"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    PRODUCT_NOT_OPEN = "PRODUCT_NOT_OPEN"  # before its open time
    PRODUCT_CLOSED = "PRODUCT_CLOSED"  # after gate closure
    PRICE_OUT_OF_BOUNDS = "PRICE_OUT_OF_BOUNDS"
    QUANTITY_TOO_SMALL = "QUANTITY_TOO_SMALL"
    QUANTITY_TOO_LARGE = "QUANTITY_TOO_LARGE"
    QUANTITY_STEP = "QUANTITY_STEP"
    TIF_NOT_SUPPORTED = "TIF_NOT_SUPPORTED"
    INSUFFICIENT_COLLATERAL = "INSUFFICIENT_COLLATERAL"
    EXPORT_CAPACITY_EXCEEDED = "EXPORT_CAPACITY_EXCEEDED"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"  # not an open order of this member
    NONCE_REUSED = "NONCE_REUSED"  # a signed order's nonce was not above the member's last one
    NO_CHANGE = "NO_CHANGE"
    INVALID_VALUE = "INVALID_VALUE"
    # pre-trade price controls (exchange.core.controls)
    PRICE_OUTSIDE_BAND = "PRICE_OUTSIDE_BAND"  # beyond the dynamic band around the reference price
    ORDER_VALUE_TOO_LARGE = "ORDER_VALUE_TOO_LARGE"  # quantity x |price| above the maximum order value
    ORDER_TO_TRADE_RATIO = "ORDER_TO_TRADE_RATIO"  # too many order entries for the member's fills
    POST_ONLY_WOULD_TRADE = "POST_ONLY_WOULD_TRADE"  # a post-only order that would take liquidity
    CLIENT_ORDER_ID_REUSED = "CLIENT_ORDER_ID_REUSED"  # a known client order id with different terms
    BLOCK_NOT_ALLOWED = "BLOCK_NOT_ALLOWED"  # a block order's products cannot clear in one auction


class CancelReason(str, Enum):
    USER = "user"
    CANCEL_ALL = "cancel_all"
    OPERATOR = "operator"
    SELF_TRADE = "self_trade"
    NOT_FILLED = "not_filled"  # IOC remainder / FOK kill
    SUSPENDED = "suspended"


# --------------------------------------------------------------------------- commands


@dataclass(slots=True)
class Command:
    type: ClassVar[str] = ""
    ts: int


@dataclass(slots=True)
class RegisterMember(Command):
    """Create or update a member (upsert). Collateral in money units, capacity in W.
    ``collateral=None`` leaves the collateral as it is (0 for a new member): used when
    on-chain settlement owns collateral and the registry only manages the rest."""

    type: ClassVar[str] = "register_member"
    member: MemberId
    collateral: int | None = 0
    export_capacity_w: int = 0
    suspended: bool = False


@dataclass(slots=True)
class UpdateCollateral(Command):
    """Fed by settlement: the member's deposited collateral (absolute), and how much
    of its trade payable has been settled since the last update.

    ``settlement_ref`` (a settlement batch id) makes the payable part idempotent: an
    update whose ref is not above the last applied one keeps its collateral but does
    not apply ``settled_payable`` again. ``withdrawal`` > 0 asks to release that much:
    the update is refused (INSUFFICIENT_COLLATERAL) when the new collateral would not
    cover the member's open buy exposure plus unsettled payable."""

    type: ClassVar[str] = "update_collateral"
    member: MemberId
    collateral: int
    settled_payable: int = 0
    settlement_ref: int = 0
    withdrawal: int = 0


@dataclass(slots=True)
class PlaceOrder(Command):
    type: ClassVar[str] = "place"
    member: MemberId
    product_id: ProductId
    side: Side
    price: int
    quantity: int
    tif: TimeInForce = TimeInForce.GTC
    client_order_id: str | None = None
    signature: str | None = None
    nonce: int | None = None  # of a signed order: must exceed the member's last used nonce
    post_only: bool = False  # refused (POST_ONLY_WOULD_TRADE) rather than trade on arrival; gtc only
    expire_at: int | None = None  # good till date (us): expires then if still resting; gtc only
    min_quantity: int | None = None  # ioc only: cancelled whole unless at least this much trades at once
    delegation: str | None = None  # placed by an agent under this member's delegation (its id)


@dataclass(slots=True)
class PlaceBlock(Command):
    """A block order: ``quantity`` Wh in each of several consecutive products (hours) of one
    delivery day, all or none, with ``price`` a limit on the average of their clearing
    prices. It takes part in the day-ahead (call) auction only, never in continuous trading."""

    type: ClassVar[str] = "place_block"
    member: MemberId
    product_ids: list[ProductId]
    side: Side
    price: int
    quantity: int
    client_order_id: str | None = None
    signature: str | None = None
    nonce: int | None = None


@dataclass(slots=True)
class CancelOrder(Command):
    type: ClassVar[str] = "cancel"
    member: MemberId
    order_id: OrderId


@dataclass(slots=True)
class ModifyOrder(Command):
    """Set a new price and/or remaining quantity. Reducing the quantity keeps time
    priority; a price change or a quantity increase loses it."""

    type: ClassVar[str] = "modify"
    member: MemberId
    order_id: OrderId
    price: int | None = None
    quantity: int | None = None


@dataclass(slots=True)
class CancelAll(Command):
    type: ClassVar[str] = "cancel_all"
    member: MemberId
    product_id: ProductId | None = None
    by_operator: bool = False


@dataclass(slots=True)
class Halt(Command):
    type: ClassVar[str] = "halt"
    reason: str = ""


@dataclass(slots=True)
class Resume(Command):
    type: ClassVar[str] = "resume"


@dataclass(slots=True)
class Tick(Command):
    """Advance time only (product openings, gate closures, deliveries)."""

    type: ClassVar[str] = "tick"


# --------------------------------------------------------------------------- events

#: Who took liquidity in a trade: the incoming order's side, or ``"auction"`` for a call auction.
Aggressor: TypeAlias = Union[Side, Literal["auction"]]  # noqa: UP007 - evaluated at run time (codec)


@dataclass(slots=True)
class Event:
    type: ClassVar[str] = ""
    seq: int
    ts: int


@dataclass(slots=True)
class ProductListed(Event):
    type: ClassVar[str] = "product_listed"
    product_id: ProductId
    start: int
    end: int
    open: int
    gate: int
    state: str  # a ProductState value


@dataclass(slots=True)
class ProductStateChanged(Event):
    type: ClassVar[str] = "product_state"
    product_id: ProductId
    state: str  # a ProductState value


@dataclass(slots=True)
class MemberUpdated(Event):
    type: ClassVar[str] = "member_updated"
    member: MemberId
    collateral: int
    export_capacity_w: int
    suspended: bool


@dataclass(slots=True)
class CollateralUpdated(Event):
    type: ClassVar[str] = "collateral_updated"
    member: MemberId
    collateral: int
    net_payable: int


@dataclass(slots=True)
class OrderAccepted(Event):
    type: ClassVar[str] = "order_accepted"
    order_id: OrderId
    member: MemberId
    product_id: ProductId
    side: Side
    price: int
    quantity: int
    tif: TimeInForce
    client_order_id: str | None
    signature: str | None


@dataclass(slots=True)
class OrderDelegated(Event):
    """The order accepted just before was placed by a trading agent under the member's
    delegation ``delegation`` (its id: the keccak-256 of the signed EIP-712 delegation)."""

    type: ClassVar[str] = "order_delegated"
    order_id: OrderId
    member: MemberId
    delegation: str


@dataclass(slots=True)
class BlockAccepted(Event):
    """A block order waits for its auction (its money and export capacity are reserved)."""

    type: ClassVar[str] = "block_accepted"
    order_id: OrderId
    member: MemberId
    product_ids: list[ProductId]
    side: Side
    price: int
    quantity: int
    client_order_id: str | None
    signature: str | None


@dataclass(slots=True)
class BlockResult(Event):
    """The auction's verdict on a block: executed in every hour (its trades precede this
    event, at each hour's clearing price) or not at all."""

    type: ClassVar[str] = "block_result"
    order_id: OrderId
    member: MemberId
    executed: bool
    prices: list[int | None]  # each hour's clearing price, in the block's order
    detail: str


@dataclass(slots=True)
class Rejected(Event):
    type: ClassVar[str] = "rejected"
    member: MemberId | None
    command: str  # the rejected command's type tag
    reason: str  # a Reason value
    detail: str
    client_order_id: str | None = None
    order_id: OrderId | None = None


@dataclass(slots=True)
class Duplicate(Event):
    """A resubmitted client order id: the original outcome, no new order."""

    type: ClassVar[str] = "duplicate"
    member: MemberId
    client_order_id: str
    order_id: OrderId | None
    original_seq: int
    reason: str | None  # the Reason value of the original rejection


@dataclass(slots=True)
class TradeEvent(Event):
    type: ClassVar[str] = "trade"
    trade_id: TradeId
    product_id: ProductId
    price: int
    quantity: int
    buy_order_id: OrderId
    sell_order_id: OrderId
    buyer: MemberId
    seller: MemberId
    aggressor: Aggressor
    buy_remaining: int
    sell_remaining: int


@dataclass(slots=True)
class OrderCancelled(Event):
    type: ClassVar[str] = "order_cancelled"
    order_id: OrderId
    member: MemberId
    product_id: ProductId
    remaining: int
    reason: CancelReason


@dataclass(slots=True)
class OrderModified(Event):
    type: ClassVar[str] = "order_modified"
    order_id: OrderId
    member: MemberId
    product_id: ProductId
    price: int
    quantity: int  # new remaining quantity
    priority_kept: bool


@dataclass(slots=True)
class OrderExpired(Event):
    type: ClassVar[str] = "order_expired"
    order_id: OrderId
    member: MemberId
    product_id: ProductId
    remaining: int


@dataclass(slots=True)
class AuctionCleared(Event):
    type: ClassVar[str] = "auction_cleared"
    product_id: ProductId
    price: int | None
    volume: int


@dataclass(slots=True)
class VolatilityInterruption(Event):
    """Continuous trading of a product stopped before a trade at ``price``, outside the
    volatility range around ``reference``: a volatility auction runs until ``until`` (us),
    then clears at one price (``auction_cleared``) and the product is open again."""

    type: ClassVar[str] = "volatility_interruption"
    product_id: ProductId
    price: int
    reference: int | None
    until: int


@dataclass(slots=True)
class PositionFinal(Event):
    type: ClassVar[str] = "position_final"
    product_id: ProductId
    member: MemberId
    bought: int
    sold: int
    net: int  # bought - sold, Wh
    payable: int  # money paid for buys - money received for sells (money units)


@dataclass(slots=True)
class MarketHalted(Event):
    type: ClassVar[str] = "market_halted"
    reason: str


@dataclass(slots=True)
class MarketResumed(Event):
    type: ClassVar[str] = "market_resumed"


@dataclass(slots=True)
class CancelAllDone(Event):
    type: ClassVar[str] = "cancel_all_done"
    member: MemberId
    product_id: ProductId | None
    cancelled: int


@dataclass(slots=True)
class TimeAdvanced(Event):
    type: ClassVar[str] = "time_advanced"


# --------------------------------------------------------------------------- codec

_M = TypeVar("_M", Command, Event)


def _registry(base: type[_M]) -> dict[str, type[_M]]:
    # Module globals, not base.__subclasses__(): dataclass(slots=True) replaces each class
    # with a new one, and the discarded originals linger among the subclasses.
    return {obj.type: obj for obj in globals().values()
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base}


COMMANDS: dict[str, type[Command]] = _registry(Command)
EVENTS: dict[str, type[Event]] = _registry(Event)
_CLASSES: list[type[Command | Event]] = [*COMMANDS.values(), *EVENTS.values()]
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _CLASSES}

# Encoding, per class: ("type", field names...) and a getter returning (tag, values...); the
# enums are str-valued, so the values are JSON-ready as they are.
_Getter: TypeAlias = Callable[[Any], tuple[object, ...]]


def _getter(cls: type[Command | Event]) -> _Getter:
    tag = cls.type
    names = _FIELDS[cls]
    if len(names) == 1:
        name = names[0]
        return lambda obj: (tag, getattr(obj, name))
    get = attrgetter(*names)
    return lambda obj: (tag, *get(obj))


_KEYS = {cls: ("type", *names) for cls, names in _FIELDS.items()}
_GETTERS = {cls: _getter(cls) for cls in _FIELDS}


# Decoding: the fields whose JSON value is not already the field's value (the enums, possibly
# next to literals), with the function that turns the JSON value into it. A null stays None
# whatever the field's type, as it always did: a journaled command with a missing side is
# replayed into the same INVALID_VALUE rejection instead of failing to decode.
def _decoder(hint: object) -> Callable[[Any], object] | None:
    members: tuple[object, ...]
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = typing.get_args(hint)
    else:
        members = (hint,)
    enums = [a for a in members if isinstance(a, type) and issubclass(a, Enum)]
    if not enums:
        return None
    if len(enums) > 1:  # pragma: no cover - a model definition error
        raise TypeError(f"ambiguous enum field type {hint}")
    enum = enums[0]
    kept = frozenset([None, *(v for a in members if typing.get_origin(a) is Literal for v in typing.get_args(a))])
    return lambda v: v if v in kept else enum(v)


def _decoders(cls: type[Command | Event]) -> tuple[tuple[str, Callable[[Any], object]], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((name, dec) for name in _FIELDS[cls] if (dec := _decoder(hints[name])) is not None)


_DECODERS = {cls: _decoders(cls) for cls in _FIELDS}


def _to_dict(obj: Command | Event) -> JsonDict:
    cls = type(obj)
    return dict(zip(_KEYS[cls], _GETTERS[cls](obj)))


def _from_dict(cls: type[_M], d: Mapping[str, Any]) -> _M:
    kw = {k: v for k, v in d.items() if k != "type"}
    for name, dec in _DECODERS[cls]:
        if name in kw:
            kw[name] = dec(kw[name])
    return cls(**kw)


def command_to_dict(cmd: Command) -> JsonDict:
    return _to_dict(cmd)


def event_to_dict(ev: Event) -> JsonDict:
    return _to_dict(ev)


def command_from_dict(d: Mapping[str, Any]) -> Command:
    """A command from its JSON object: the same types as the command that was encoded."""
    return _from_dict(COMMANDS[d["type"]], d)


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """An event from its JSON object (e.g. the journal): the same types as the live event."""
    return _from_dict(EVENTS[d["type"]], d)


#: Event types that answer a command itself (vs. calendar transitions applied before it).
OUTCOME_TYPES = frozenset({"rejected", "duplicate", "order_accepted", "order_modified", "order_cancelled",
                           "cancel_all_done", "block_accepted"})


def command_outcome(events: list[Event]) -> Event:
    """The event that answers the command among its events: calendar transitions due
    before the command (a product opening, a gate closing with its expiries or auction)
    are applied in the same step and come first."""
    return next((ev for ev in events if ev.type in OUTCOME_TYPES), events[0])
