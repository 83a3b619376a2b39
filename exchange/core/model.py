"""Commands (the engine's only input) and events (its only output).

Both are plain slotted dataclasses with a ``type`` tag so they round-trip
through JSON for the journal: :func:`command_to_dict` / :func:`command_from_dict`
and :func:`event_to_dict` / :func:`event_from_dict`. Every command carries
``ts``, the time input in integer microseconds UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from operator import attrgetter
from typing import ClassVar


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
    member: str
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
    member: str
    collateral: int
    settled_payable: int = 0
    settlement_ref: int = 0
    withdrawal: int = 0


@dataclass(slots=True)
class PlaceOrder(Command):
    type: ClassVar[str] = "place"
    member: str
    product_id: str
    side: Side
    price: int
    quantity: int
    tif: TimeInForce = TimeInForce.GTC
    client_order_id: str | None = None
    signature: str | None = None
    nonce: int | None = None  # of a signed order: must exceed the member's last used nonce


@dataclass(slots=True)
class CancelOrder(Command):
    type: ClassVar[str] = "cancel"
    member: str
    order_id: int


@dataclass(slots=True)
class ModifyOrder(Command):
    """Set a new price and/or remaining quantity. Reducing the quantity keeps time
    priority; a price change or a quantity increase loses it."""

    type: ClassVar[str] = "modify"
    member: str
    order_id: int
    price: int | None = None
    quantity: int | None = None


@dataclass(slots=True)
class CancelAll(Command):
    type: ClassVar[str] = "cancel_all"
    member: str
    product_id: str | None = None
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


@dataclass(slots=True)
class Event:
    type: ClassVar[str] = ""
    seq: int
    ts: int


@dataclass(slots=True)
class ProductListed(Event):
    type: ClassVar[str] = "product_listed"
    product_id: str
    start: int
    end: int
    open: int
    gate: int
    state: str


@dataclass(slots=True)
class ProductStateChanged(Event):
    type: ClassVar[str] = "product_state"
    product_id: str
    state: str


@dataclass(slots=True)
class MemberUpdated(Event):
    type: ClassVar[str] = "member_updated"
    member: str
    collateral: int
    export_capacity_w: int
    suspended: bool


@dataclass(slots=True)
class CollateralUpdated(Event):
    type: ClassVar[str] = "collateral_updated"
    member: str
    collateral: int
    net_payable: int


@dataclass(slots=True)
class OrderAccepted(Event):
    type: ClassVar[str] = "order_accepted"
    order_id: int
    member: str
    product_id: str
    side: str
    price: int
    quantity: int
    tif: str
    client_order_id: str | None
    signature: str | None


@dataclass(slots=True)
class Rejected(Event):
    type: ClassVar[str] = "rejected"
    member: str | None
    command: str
    reason: str
    detail: str
    client_order_id: str | None = None
    order_id: int | None = None


@dataclass(slots=True)
class Duplicate(Event):
    """A resubmitted client order id: the original outcome, no new order."""

    type: ClassVar[str] = "duplicate"
    member: str
    client_order_id: str
    order_id: int | None
    original_seq: int
    reason: str | None


@dataclass(slots=True)
class TradeEvent(Event):
    type: ClassVar[str] = "trade"
    trade_id: int
    product_id: str
    price: int
    quantity: int
    buy_order_id: int
    sell_order_id: int
    buyer: str
    seller: str
    aggressor: str  # side of the incoming order ("buy"/"sell"), "auction" for a call auction
    buy_remaining: int
    sell_remaining: int


@dataclass(slots=True)
class OrderCancelled(Event):
    type: ClassVar[str] = "order_cancelled"
    order_id: int
    member: str
    product_id: str
    remaining: int
    reason: str


@dataclass(slots=True)
class OrderModified(Event):
    type: ClassVar[str] = "order_modified"
    order_id: int
    member: str
    product_id: str
    price: int
    quantity: int  # new remaining quantity
    priority_kept: bool


@dataclass(slots=True)
class OrderExpired(Event):
    type: ClassVar[str] = "order_expired"
    order_id: int
    member: str
    product_id: str
    remaining: int


@dataclass(slots=True)
class AuctionCleared(Event):
    type: ClassVar[str] = "auction_cleared"
    product_id: str
    price: int | None
    volume: int


@dataclass(slots=True)
class PositionFinal(Event):
    type: ClassVar[str] = "position_final"
    product_id: str
    member: str
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
    member: str
    product_id: str | None
    cancelled: int


@dataclass(slots=True)
class TimeAdvanced(Event):
    type: ClassVar[str] = "time_advanced"


# --------------------------------------------------------------------------- codec

_ENUM_FIELDS = {"side": Side, "tif": TimeInForce}


def _registry(base: type) -> dict[str, type]:
    # Module globals, not base.__subclasses__(): dataclass(slots=True) replaces each class
    # with a new one, and the discarded originals linger among the subclasses.
    return {obj.type: obj for obj in globals().values()
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base}


COMMANDS: dict[str, type[Command]] = _registry(Command)
EVENTS: dict[str, type[Event]] = _registry(Event)
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (*COMMANDS.values(), *EVENTS.values())
}
# Per class: ("type", field names...) and a getter returning (tag, values...); the enums
# are str-valued, so the values are JSON-ready as they are.
_KEYS = {cls: ("type", *names) for cls, names in _FIELDS.items()}
_GETTERS = {cls: (lambda tag, get: (lambda obj: (tag, *get(obj))))(cls.type, attrgetter(*names) if len(names) > 1
            else (lambda n: lambda obj: (getattr(obj, n),))(names[0]))
            for cls, names in _FIELDS.items()}


def _to_dict(obj) -> dict:
    cls = type(obj)
    return dict(zip(_KEYS[cls], _GETTERS[cls](obj)))


def command_to_dict(cmd: Command) -> dict:
    return _to_dict(cmd)


def event_to_dict(ev: Event) -> dict:
    return _to_dict(ev)


def command_from_dict(d: dict) -> Command:
    d = dict(d)
    cls = COMMANDS[d.pop("type")]
    for name, enum in _ENUM_FIELDS.items():
        if name in d and d[name] is not None:
            d[name] = enum(d[name])
    return cls(**d)


def event_from_dict(d: dict) -> Event:
    d = dict(d)
    return EVENTS[d.pop("type")](**d)


#: Event types that answer a command itself (vs. calendar transitions applied before it).
OUTCOME_TYPES = frozenset({"rejected", "duplicate", "order_accepted", "order_modified", "order_cancelled",
                           "cancel_all_done"})


def command_outcome(events: list[Event]) -> Event:
    """The event that answers the command among its events: calendar transitions due
    before the command (a product opening, a gate closing with its expiries or auction)
    are applied in the same step and come first."""
    return next((ev for ev in events if ev.type in OUTCOME_TYPES), events[0])
