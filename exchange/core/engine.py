"""The market engine: one community market, all its products' books, pure.

``MarketEngine.process(command) -> list[Event]`` is the only entry point. It
reads no clock (time is ``command.ts``), does no I/O and is deterministic: the
same command stream yields the same events, byte for byte, and the same
:meth:`MarketEngine.state_hash`.

Time never runs backwards inside the engine: a command stamped earlier than
the engine's clock is processed at the engine's clock. Before handling a
command the engine applies every calendar transition due at or before its
time (listing a delivery day, opening, gate closure, delivery), each stamped
with its own scheduled time.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any, Concatenate, ParamSpec, TypeVar

from exchange.core import auction, controls
from exchange.core.book import Order, OrderBook
from exchange.core.calendar import Calendar, CalendarConfig, GateMode, Product, ProductState
from exchange.core.controls import PriceControls, triggers_interruption
from exchange.core.ids import MemberId, OrderId, ProductId, TradeId
from exchange.core.model import (
    Aggressor,
    AuctionCleared,
    BlockAccepted,
    BlockResult,
    CancelAll,
    CancelAllDone,
    CancelOrder,
    CancelReason,
    CollateralUpdated,
    Command,
    Duplicate,
    Event,
    Halt,
    JsonDict,
    MarketHalted,
    MarketResumed,
    Mechanism,
    MemberUpdated,
    ModifyOrder,
    OrderAccepted,
    OrderCancelled,
    OrderDelegated,
    OrderExpired,
    OrderModified,
    PlaceBlock,
    PlaceOrder,
    PositionFinal,
    ProductListed,
    ProductStateChanged,
    Reason,
    RegisterMember,
    Rejected,
    Resume,
    SelfTradePrevention,
    Side,
    Tick,
    TimeInForce,
    TradeEvent,
    UpdateCollateral,
    VolatilityInterruption,
)

DAY_US = 86_400_000_000
#: A delivery day is listed (its products visible, pre-open) this long before it opens.
LISTING_LEAD_US = DAY_US

_LIST, _OPEN, _GATE, _DELIVER, _REOPEN, _EXPIRE = 0, 1, 2, 3, 4, 5

_P = ParamSpec("_P")
_Alloc = list[tuple[Order, Order, int]]
_E = TypeVar("_E", bound=Event)

# Enum members read on the hot paths, bound once: on Python 3.11 reading ``Side.BUY`` runs
# the enum's member descriptor (about 0.15 us), several times per command otherwise.
_BUY, _SELL = Side.BUY, Side.SELL
_GTC, _FOK = TimeInForce.GTC, TimeInForce.FOK
_CALL = Mechanism.CALL
_OPEN_STATE = ProductState.OPEN
_AUCTION_STATE = ProductState.AUCTION
_STP_ALLOW = SelfTradePrevention.ALLOW
_STP_CANCEL_NEWEST = SelfTradePrevention.CANCEL_NEWEST
_STP_CANCEL_OLDEST = SelfTradePrevention.CANCEL_OLDEST
_USER = CancelReason.USER


@dataclass(frozen=True, slots=True)
class MarketConfig:
    market_id: str = "community"
    calendar: CalendarConfig = field(default_factory=CalendarConfig)
    price_min: int = -50_000  # ticks: -500.00 EUR/MWh
    price_max: int = 400_000  # ticks: 4000.00 EUR/MWh
    min_quantity: int = 1  # Wh
    quantity_step: int = 1  # Wh
    max_quantity: int = 1_000_000_000  # Wh (1 GWh) per order
    self_trade_prevention: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST
    mechanism: Mechanism = Mechanism.CONTINUOUS
    risk_checks: bool = True
    # A signed order's nonce is used up by any answer, a rejection included (else an order
    # refused during a halt could be replayed after it). Markets whose stored config predates
    # this rule keep the old one (the nonce checked last), so their journals replay unchanged.
    nonce_first: bool = True
    # A rejection that changes nothing (no nonce used up) is answered but neither numbered in
    # the event sequence nor journaled, and a rejected client order id is not remembered (it
    # may be sent again). Markets whose stored config predates this rule keep the old one
    # (every rejection journaled, its client id remembered), so their journals replay unchanged.
    quiet_rejections: bool = True
    # A known client order id sent with other terms (product, side, price, quantity, tif) is
    # refused (CLIENT_ORDER_ID_REUSED) instead of answered as a duplicate. Stored configs
    # without it keep answering duplicate.
    coid_terms: bool = True
    controls: PriceControls = field(default_factory=PriceControls)

    def __post_init__(self) -> None:
        if self.price_min >= self.price_max:
            raise ValueError("price_min must be below price_max")
        if self.min_quantity < 1 or self.quantity_step < 1 or self.max_quantity < self.min_quantity:
            raise ValueError("quantities: need 1 <= min_quantity <= max_quantity and quantity_step >= 1")
        if self.mechanism is Mechanism.CALL_THEN_CONTINUOUS and self.calendar.gate is not GateMode.ROLLING:
            raise ValueError("call_then_continuous needs the rolling gate (intraday); the auction clears at the "
                             "day-ahead time, D-1 at gate_day_ahead_local_time")

    def to_dict(self) -> JsonDict:
        c = self.calendar
        return {
            "market_id": self.market_id,
            "calendar": {
                "timezone": c.timezone,
                "product_minutes": c.product_minutes,
                "gate": c.gate.value,
                "gate_day_ahead_local_time": c.gate_day_ahead_local_time.isoformat(),
                "gate_rolling_minutes": c.gate_rolling_minutes,
                "open_days_before": c.open_days_before,
            },
            "price_min": self.price_min,
            "price_max": self.price_max,
            "min_quantity": self.min_quantity,
            "quantity_step": self.quantity_step,
            "max_quantity": self.max_quantity,
            "self_trade_prevention": self.self_trade_prevention.value,
            "mechanism": self.mechanism.value,
            "risk_checks": self.risk_checks,
            "nonce_first": self.nonce_first,
            "quiet_rejections": self.quiet_rejections,
            "coid_terms": self.coid_terms,
            "controls": self.controls.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MarketConfig:
        c = dict(d["calendar"])
        c["gate"] = GateMode(c["gate"])
        c["gate_day_ahead_local_time"] = time.fromisoformat(c["gate_day_ahead_local_time"])
        rest = {k: v for k, v in d.items() if k != "calendar"}
        rest["self_trade_prevention"] = SelfTradePrevention(rest["self_trade_prevention"])
        rest["mechanism"] = Mechanism(rest["mechanism"])
        rest.setdefault("nonce_first", False)  # stored before the rule existed
        rest.setdefault("quiet_rejections", False)  # likewise
        rest.setdefault("coid_terms", False)  # likewise
        rest["controls"] = PriceControls.from_dict(rest.get("controls"))  # absent: all off
        return cls(calendar=CalendarConfig(**c), **rest)


def _terms(cmd: PlaceOrder | PlaceBlock) -> str:
    """An order's terms, as a client order id remembers them (a block: its hours, "block")."""
    side = cmd.side.value if isinstance(cmd.side, Side) else str(cmd.side)
    if isinstance(cmd, PlaceBlock):
        hours = ",".join(map(str, cmd.product_ids)) if type(cmd.product_ids) is list else str(cmd.product_ids)
        return f"{hours}|{side}|{cmd.price}|{cmd.quantity}|block"
    tif = cmd.tif.value if isinstance(cmd.tif, TimeInForce) else str(cmd.tif)
    return f"{cmd.product_id}|{side}|{cmd.price}|{cmd.quantity}|{tif}"


class Account:
    __slots__ = ("member", "collateral", "export_capacity_w", "suspended", "open_exposure", "net_payable",
                 "last_nonce", "settlement_ref")

    def __init__(self, member: MemberId) -> None:
        self.member = member
        self.collateral = 0  # money units deposited (fed by settlement)
        self.export_capacity_w = 0
        self.suspended = False
        self.open_exposure = 0  # money the member's resting orders could cost
        self.net_payable = 0  # money owed for trades not yet settled (negative: owed to it)
        self.last_nonce = -1  # highest nonce of a signed order seen (replay protection)
        self.settlement_ref = 0  # last settlement batch whose payable was applied


class Block:
    """A pending block order (exchange.core.model.PlaceBlock)."""

    __slots__ = ("order_id", "member", "product_ids", "side", "price", "quantity", "client_order_id", "signature",
                 "ts")

    def __init__(self, order_id: OrderId, member: MemberId, product_ids: tuple[ProductId, ...], side: Side,
                 price: int, quantity: int, client_order_id: str | None, signature: str | None, ts: int) -> None:
        self.order_id = order_id
        self.member = member
        self.product_ids = product_ids
        self.side = side
        self.price = price
        self.quantity = quantity
        self.client_order_id = client_order_id
        self.signature = signature
        self.ts = ts

    def exposure(self) -> int:
        """Money the block could cost: its quantity in every hour at its average limit."""
        p = self.price if self.side is _BUY else -self.price
        return self.quantity * len(self.product_ids) * p if p > 0 else 0

    def export(self) -> list[Any]:
        return [self.order_id, self.member, list(self.product_ids), self.side.value, self.price, self.quantity,
                self.client_order_id, self.signature, self.ts]


class ProductBook:
    """A listed product: its calendar entry, state and book."""

    __slots__ = ("product", "state", "book", "capacity_factor", "ref_price", "auction_until", "otr")

    def __init__(self, product: Product, state: ProductState) -> None:
        self.product = product
        self.state = state
        self.book = OrderBook(product.product_id)
        self.capacity_factor = product.minutes  # W x minutes / 60 = Wh
        self.ref_price: int | None = None  # last trade (or auction) price: the price controls' reference
        self.auction_until = 0  # end of a volatility auction in progress (state AUCTION)
        self.otr: dict[MemberId, list[int]] = {}  # member -> [order entries, fills] (order-to-trade ratio)


class MarketEngine:
    def __init__(self, config: MarketConfig) -> None:
        self.config = config
        self.calendar = Calendar(config.calendar)
        self.seq = 0
        self.now = 0
        self.started = False
        self.next_order_id = OrderId(1)
        self.next_trade_id = TradeId(1)
        self.halted = False
        self.halt_reason = ""
        self.products: dict[ProductId, ProductBook] = {}
        self.accounts: dict[MemberId, Account] = {}
        self.orders: dict[OrderId, Order] = {}  # live (resting) orders
        # (member, client_order_id) -> (order_id | None, seq of the original outcome, reason | None,
        # the original's terms "product|side|price|quantity|tif" | None)
        self.client_ids: dict[tuple[MemberId, str], tuple[OrderId | None, int, str | None, str | None]] = {}
        self._client_ids_by_product: dict[ProductId, list[tuple[MemberId, str]]] = {}
        # product -> member -> [bought Wh, sold Wh, payable money]
        self.positions: dict[ProductId, dict[MemberId, list[int]]] = {}
        # (product, member) -> open sell Wh
        self.open_sell: dict[tuple[ProductId, MemberId], int] = {}
        # (time, kind, delivery start, key): key is a product id, or the ISO date of a day to list
        self._schedule: list[tuple[int, int, int, str]] = []
        self._out: list[Event] = []
        self.blocks: dict[OrderId, Block] = {}  # pending block orders, in arrival order
        self._blocks_by_product: dict[ProductId, list[OrderId]] = {}
        self._cleared: tuple[int, frozenset[ProductId]] = (-1, frozenset())  # a joint auction just run
        self._otr_on = bool(config.controls.otr_max)
        cc = config.controls
        self._controls_on = bool(cc.banded or cc.max_order_value or cc.otr_max)  # checks at order entry
        self._volatility_on = config.controls.volatility_on
        self._banded = cc.banded

    # ------------------------------------------------------------------ entry point
    def process(self, cmd: Command) -> list[Event]:
        out: list[Event] = []
        self._out = out
        ts = cmd.ts if cmd.ts > self.now else self.now
        sched = self._schedule
        if sched and sched[0][0] <= ts or not self.started:
            self._advance(ts)
        else:  # nothing due: _advance would only set the clock
            self.now = ts
        # exact types (a dispatch table's semantics), the frequent ones first
        if type(cmd) is PlaceOrder:
            self._place(cmd, ts)
        elif type(cmd) is CancelOrder:
            self._cancel(cmd, ts)
        elif type(cmd) is ModifyOrder:
            self._modify(cmd, ts)
        elif type(cmd) is CancelAll:
            self._cancel_all(cmd, ts)
        elif type(cmd) is RegisterMember:
            self._register(cmd, ts)
        elif type(cmd) is PlaceBlock:
            self._place_block(cmd, ts)
        elif type(cmd) is UpdateCollateral:
            self._collateral(cmd, ts)
        elif type(cmd) is Halt:
            self._halt(cmd, ts)
        elif type(cmd) is Resume:
            self._resume(cmd, ts)
        elif type(cmd) is not Tick:  # a tick only advances time
            raise KeyError(type(cmd))
        return out

    def next_transition_us(self) -> int | None:
        """When the engine next has something to do by itself (for the runtime's timer)."""
        return self._schedule[0][0] if self._schedule else None

    # ------------------------------------------------------------------ emission
    def _emit(self, cls: Callable[Concatenate[int, int, _P], _E], ts: int, *args: _P.args,
              **kwargs: _P.kwargs) -> _E:
        """Emit the event ``cls(seq, ts, *args)`` with the next sequence number."""
        self.seq += 1
        ev = cls(self.seq, ts, *args, **kwargs)
        self._out.append(ev)
        return ev

    def _reject(self, ts: int, member: MemberId | None, command: str, reason: Reason, detail: str,
                client_order_id: str | None = None, order_id: OrderId | None = None, *,
                spent: bool = False) -> None:
        """Answer a command with a rejection. Under the quiet rule a rejection that used up
        nothing (``spent``: a signed order's nonce was) changes no state: it carries the seq
        of the last event (the state it was judged on), takes no new one and is not journaled."""
        if self.config.quiet_rejections:
            if spent:
                self._emit(Rejected, ts, member, command, reason.value, detail, client_order_id, order_id)
            else:
                self._out.append(Rejected(self.seq, ts, member, command, reason.value, detail, client_order_id,
                                          order_id))
            return
        ev = self._emit(Rejected, ts, member, command, reason.value, detail, client_order_id, order_id)
        if client_order_id is not None and member is not None and command == PlaceOrder.type:
            self._remember_client_id(member, client_order_id, None, ev.seq, reason.value, None, None)

    def _answered_by_client_id(self, ts: int, command: str, member: MemberId, coid: str, terms: str) -> bool:
        """A known client order id is answered here: the original outcome (``duplicate``) for
        the same terms, CLIENT_ORDER_ID_REUSED for other ones. False for a new id."""
        prev = self.client_ids.get((member, coid))
        if prev is None:
            return False
        if prev[3] is not None and prev[3] != terms:
            self._reject(ts, member, command, Reason.CLIENT_ORDER_ID_REUSED,
                         f"client order id {coid} is order {prev[0]} ({prev[3]}); this request's terms ({terms}) "
                         "differ", client_order_id=coid, order_id=prev[0])
        elif self.config.quiet_rejections:  # changes nothing: not journaled (like a quiet rejection)
            self._out.append(Duplicate(self.seq, ts, member, coid, prev[0], prev[1], prev[2]))
        else:
            self._emit(Duplicate, ts, member, coid, prev[0], prev[1], prev[2])
        return True

    def _remember_client_id(self, member: MemberId, coid: str, order_id: OrderId | None, seq: int,
                            reason: str | None, product_id: ProductId | None, terms: str | None) -> None:
        key = (member, coid)
        self.client_ids[key] = (order_id, seq, reason, terms)
        if product_id is not None:
            self._client_ids_by_product.setdefault(product_id, []).append(key)

    # ------------------------------------------------------------------ calendar
    def _advance(self, ts: int) -> None:
        if not self.started:
            self.started = True
            day = self.calendar.local_date(ts)
            self._push(self.calendar.day_open_us(day) - LISTING_LEAD_US, _LIST, 0, day.isoformat())
        sched = self._schedule
        while sched and sched[0][0] <= ts:
            t, kind, _, key = heapq.heappop(sched)
            if kind == _LIST:
                self._list_day(date.fromisoformat(key), t)
            elif kind == _EXPIRE:
                self._expire_order(OrderId(int(key)), t)
            else:
                pid = ProductId(key)
                pb = self.products[pid]
                if kind == _OPEN:
                    pb.state = _AUCTION_STATE if pb.auction_until > t else _OPEN_STATE
                    self._emit(ProductStateChanged, t, pid, pb.state.value)
                elif kind == _GATE:
                    self._gate_closure(pb, t)
                elif kind == _REOPEN:
                    self._reopen(pb, t)
                else:
                    self._delivered(pb, t)
        self.now = ts

    def _push(self, t: int, kind: int, start: int, key: str) -> None:
        heapq.heappush(self._schedule, (t, kind, start, key))

    def _list_day(self, day: date, t: int) -> None:
        for p in self.calendar.products(day):
            if p.end_us <= t:
                continue
            state = p.state_at(t)
            auction_at = self._day_ahead_auction(p)
            if auction_at is not None and state is _OPEN_STATE and t < auction_at:
                state = _AUCTION_STATE  # collecting orders for the day-ahead auction
            pb = self.products[p.product_id] = ProductBook(p, state)
            if auction_at is not None and t < auction_at:
                pb.auction_until = auction_at
                self._push(auction_at, _REOPEN, p.start_us, p.product_id)
            self.positions[p.product_id] = {}
            self._emit(ProductListed, t, p.product_id, p.start_us, p.end_us, p.open_us, p.gate_us, state.value)
            if p.open_us > t:
                self._push(p.open_us, _OPEN, p.start_us, p.product_id)
            if p.gate_us > t:
                self._push(p.gate_us, _GATE, p.start_us, p.product_id)
            self._push(p.end_us, _DELIVER, p.start_us, p.product_id)
            del pb
        nxt = date.fromordinal(day.toordinal() + 1)
        self._push(self.calendar.day_open_us(nxt) - LISTING_LEAD_US, _LIST, 0, nxt.isoformat())

    def _gate_closure(self, pb: ProductBook, t: int) -> None:
        pid = pb.product.product_id
        if self.config.mechanism is Mechanism.CALL or pb.state is _AUCTION_STATE:
            self._auction(pb, t)
        for o in list(pb.book.orders()):
            self._unrest(pb, o)
            self._emit(OrderExpired, t, o.order_id, o.member, pid, o.remaining)
        pb.state = ProductState.CLOSED
        self._emit(ProductStateChanged, t, pid, ProductState.CLOSED.value)
        for member in sorted(self.positions[pid]):
            bought, sold, payable = self.positions[pid][member]
            self._emit(PositionFinal, t, pid, member, bought, sold, bought - sold, payable)

    def _delivered(self, pb: ProductBook, t: int) -> None:
        pid = pb.product.product_id
        pb.state = ProductState.DELIVERED
        self._emit(ProductStateChanged, t, pid, ProductState.DELIVERED.value)
        # Free what delivery makes obsolete; the journal keeps the history.
        pb.book = OrderBook(pid)
        for member in self.positions.pop(pid, {}):
            self.open_sell.pop((pid, member), None)
        pb.otr = {}
        for key in self._client_ids_by_product.pop(pid, ()):
            self.client_ids.pop(key, None)

    def _clear_auction(self, pb: ProductBook, t: int) -> None:
        pid = pb.product.product_id
        book = pb.book
        bids = [o for _, lvl in book.side_levels(Side.BUY) for o in lvl.live_orders()]
        asks = [o for _, lvl in book.side_levels(Side.SELL) for o in lvl.live_orders()]
        c = auction.clearing(bids, asks)
        self._emit(AuctionCleared, t, pid, c.price, c.volume)
        if c.price is None:
            return  # nothing crosses: nothing to allocate
        for buy, sell, q in auction.allocate(bids, asks, c):
            self._execute(pb, buy, sell, q, c.price, "auction", t)
            for o in (buy, sell):
                if book.fill(o, q):
                    del self.orders[o.order_id]

    # ------------------------------------------------------------------ block orders
    def _auction(self, pb: ProductBook, t: int) -> None:
        """Clear ``pb``'s call auction at ``t``; with block orders, jointly with every product
        they connect it to (all clear at the same time by construction)."""
        pid = pb.product.product_id
        if self._cleared[0] == t and pid in self._cleared[1]:
            return  # cleared already, jointly with a block's other hours
        if not self._blocks_by_product.get(pid):
            self._clear_auction(pb, t)
            return
        group: set[ProductId] = set()
        todo = [pid]
        pending: dict[OrderId, Block] = {}
        while todo:
            p = todo.pop()
            if p in group:
                continue
            group.add(p)
            for oid in self._blocks_by_product.get(p, ()):
                b = pending[oid] = self.blocks[oid]
                todo.extend(b.product_ids)
        products = sorted(group)
        base = {p: self._auction_sides(self.products[p]) for p in products}
        # Blocks in time priority: each is kept if, with those kept before it, every kept block
        # fills completely in each of its hours and its average price limit holds. Adding a
        # block changes only its own hours' clearings, so only those are recomputed and only
        # the blocks in those hours re-checked (the others are as feasible as before).
        state = {p: self._product_clearing(p, base[p], ()) for p in products}
        kept_on: dict[ProductId, list[Block]] = {p: [] for p in products}
        kept: list[Block] = []
        for b in sorted(pending.values(), key=lambda b: b.order_id):
            trial = {p: self._product_clearing(p, base[p], (*kept_on[p], b)) for p in b.product_ids}
            if any(short for _, _, short in trial.values()):
                continue
            touched = {x.order_id: x for p in b.product_ids for x in kept_on[p]}
            touched[b.order_id] = b
            price = {p: (trial[p] if p in trial else state[p])[0].price
                     for x in touched.values() for p in x.product_ids}
            if all(self._block_within_limit(x, price) for x in touched.values()):
                kept.append(b)
                for p in b.product_ids:
                    state[p] = trial[p]
                    kept_on[p].append(b)
        for p in products:
            ppb = self.products[p]
            c, alloc, _ = state[p]
            self._emit(AuctionCleared, t, p, c.price, c.volume)
            for buy, sell, q in alloc:
                assert c.price is not None
                self._execute(ppb, buy, sell, q, c.price, "auction", t)
                for o in (buy, sell):
                    if o.live and ppb.book.fill(o, q):
                        del self.orders[o.order_id]
        executed = {b.order_id for b in kept}
        for b in sorted(pending.values(), key=lambda b: b.order_id):
            self._drop_block(b)
            prices = [state[p][0].price for p in b.product_ids]
            ok = b.order_id in executed
            self._emit(BlockResult, t, b.order_id, b.member, ok, prices,
                       "executed in every hour" if ok else
                       "not executed: with the blocks before it, it could not fill in every hour within its limit")
        self._cleared = (t, frozenset(group))

    def _auction_sides(self, pb: ProductBook) -> tuple[list[Order], list[Order]]:
        book = pb.book
        return ([o for _, lvl in book.side_levels(_BUY) for o in lvl.live_orders()],
                [o for _, lvl in book.side_levels(_SELL) for o in lvl.live_orders()])

    def _product_clearing(self, pid: ProductId, sides: tuple[list[Order], list[Order]],
                          blocks: Sequence[Block]) -> tuple[auction.Clearing, _Alloc, bool]:
        """One product's clearing and allocation with ``blocks`` in (each as a must-fill order
        at the extreme price, in the order given, ahead of the book: price priority), and
        whether some block does not fill completely in it."""
        cfg = self.config
        bids, asks = sides
        eb: list[Order] = []
        ea: list[Order] = []
        for b in blocks:
            is_buy = b.side is _BUY
            (eb if is_buy else ea).append(Order(b.order_id, b.member, pid, b.side,
                                                cfg.price_max if is_buy else cfg.price_min, b.quantity, _GTC,
                                                b.client_order_id, None, b.ts))
        all_bids, all_asks = [*eb, *bids], [*ea, *asks]
        c = auction.clearing(all_bids, all_asks, [*eb, *ea])
        alloc = auction.allocate(all_bids, all_asks, c)
        filled: dict[int, int] = {}
        for buy, sell, q in alloc:
            filled[id(buy)] = filled.get(id(buy), 0) + q
            filled[id(sell)] = filled.get(id(sell), 0) + q
        short = any(filled.get(id(o), 0) < o.quantity for o in (*eb, *ea))
        return c, alloc, short

    @staticmethod
    def _block_within_limit(b: Block, price: Mapping[ProductId, int | None]) -> bool:
        """Every hour of ``b`` cleared and their prices average within its limit."""
        prices = [price[p] for p in b.product_ids]
        if any(x is None for x in prices):
            return False
        total, limit = sum(x for x in prices if x is not None), b.price * len(prices)
        return not ((total > limit) if b.side is _BUY else (total < limit))

    def _drop_block(self, b: Block) -> None:
        """Release a block's reservations (cancelled, or decided by its auction)."""
        del self.blocks[b.order_id]
        self.accounts[b.member].open_exposure -= b.exposure()
        for p in b.product_ids:
            ids = self._blocks_by_product[p]
            ids.remove(b.order_id)
            if not ids:
                del self._blocks_by_product[p]
            if b.side is _SELL:
                self.open_sell[(p, b.member)] -= b.quantity

    def _block_clearing_time(self, pb: ProductBook) -> int | None:
        """When ``pb``'s next call auction clears, if a block may take part in it."""
        if pb.state is _AUCTION_STATE and self.config.mechanism is Mechanism.CALL_THEN_CONTINUOUS \
                and pb.auction_until == self._day_ahead_auction(pb.product):
            return pb.auction_until
        if self.config.mechanism is _CALL and pb.state is _OPEN_STATE:
            return pb.product.gate_us
        return None

    def _check_block(self, cmd: PlaceBlock) -> tuple[Reason, str] | None:
        pids = cmd.product_ids
        if type(pids) is not list or not 2 <= len(pids) <= 24 or len(set(pids)) != len(pids):
            return Reason.INVALID_VALUE, "a block names 2 to 24 different products"
        pbs = [self.products.get(p) for p in pids]
        missing = [p for p, pb in zip(pids, pbs) if pb is None]
        if missing:
            return Reason.UNKNOWN_PRODUCT, f"no product {missing[0]}"
        books = [pb for pb in pbs if pb is not None]
        if any(a.product.end_us != b.product.start_us for a, b in zip(books, books[1:])):
            return Reason.BLOCK_NOT_ALLOWED, "a block's products must be consecutive, in delivery order"
        if len({pb.product.delivery_day for pb in books}) != 1:
            return Reason.BLOCK_NOT_ALLOWED, "a block's products must be of one delivery day"
        times = {self._block_clearing_time(pb) for pb in books}
        if None in times or len(times) != 1:
            return Reason.BLOCK_NOT_ALLOWED, ("block orders take part in a call auction only (the day-ahead auction "
                                              "of call_then_continuous, or a call market's gate), all hours at once")
        return None

    def _place_block(self, cmd: PlaceBlock, ts: int) -> None:
        member, coid = cmd.member, cmd.client_order_id
        terms = _terms(cmd)
        if coid is not None and self._answered_by_client_id(ts, PlaceBlock.type, member, coid, terms):
            return
        err = None
        if type(cmd.side) is not Side or type(cmd.price) is not int or type(cmd.quantity) is not int:
            err = Reason.INVALID_VALUE, "side must be an enum and price/quantity integers"
        spent = False
        if err is None and cmd.nonce is not None and member in self.accounts:
            err = self._use_nonce(member, cmd.nonce)
            spent = err is None
        if err is None and self.halted:
            err = Reason.MARKET_HALTED, f"market halted: {self.halt_reason}"
        err = (err or self._check_member(member) or self._check_block(cmd)
               or self._check_price_qty(cmd.price, cmd.quantity))
        n = len(cmd.product_ids) if type(cmd.product_ids) is list else 0
        if err is None and self._controls_on:
            msg = controls.value_violation(self.config.controls, cmd.price, cmd.quantity * n)
            if msg is not None:
                err = Reason.ORDER_VALUE_TOO_LARGE, msg
        blk = None
        if err is None:
            blk = Block(self.next_order_id, member, tuple(cmd.product_ids), cmd.side, cmd.price, cmd.quantity, coid,
                        cmd.signature, ts)
            err = self._check_block_risk(blk)
        if err is not None or blk is None:
            assert err is not None
            self._reject(ts, member, PlaceBlock.type, err[0], err[1], client_order_id=coid, spent=spent)
            return
        self.next_order_id = OrderId(blk.order_id + 1)
        self.blocks[blk.order_id] = blk
        self.accounts[member].open_exposure += blk.exposure()
        for p in blk.product_ids:
            self._blocks_by_product.setdefault(p, []).append(blk.order_id)
            if blk.side is _SELL:
                self.open_sell[(p, member)] = self.open_sell.get((p, member), 0) + blk.quantity
        ev = self._emit(BlockAccepted, ts, blk.order_id, member, list(blk.product_ids), cmd.side, cmd.price,
                        cmd.quantity, coid, cmd.signature)
        if coid is not None:
            self._remember_client_id(member, coid, blk.order_id, ev.seq, None, blk.product_ids[-1], terms)

    def _check_block_risk(self, blk: Block) -> tuple[Reason, str] | None:
        if not self.config.risk_checks:
            return None
        err = self._check_collateral(blk.member, blk.exposure())
        if err is None and blk.side is _SELL:  # its quantity in each of its hours
            err = next(filter(None, (self._check_capacity(self.products[p], blk.member, blk.quantity)
                                     for p in blk.product_ids)), None)
        return err

    def _day_ahead_auction(self, p: Product) -> int | None:
        """When the day-ahead auction of ``p`` clears (call_then_continuous), if it has one: the
        day-ahead time must fall after the product opens and before its intraday gate."""
        if self.config.mechanism is not Mechanism.CALL_THEN_CONTINUOUS:
            return None
        t = self.calendar.day_ahead_us(p.delivery_day)
        return t if p.open_us < t < p.gate_us else None

    def _interrupt(self, pb: ProductBook, price: int, t: int) -> None:
        """Stop continuous trading of ``pb``: a trade at ``price`` would leave the volatility
        range around its reference. Orders rest without matching until the auction clears."""
        until = t + self.config.controls.volatility_auction_s * 1_000_000
        pb.state = _AUCTION_STATE
        pb.auction_until = until
        pid = pb.product.product_id
        self._emit(VolatilityInterruption, t, pid, price, pb.ref_price, until)
        self._emit(ProductStateChanged, t, pid, ProductState.AUCTION.value)
        self._push(until, _REOPEN, pb.product.start_us, pid)

    def _expire_order(self, oid: OrderId, t: int) -> None:
        """A good-till-date order's time has come (if it still rests)."""
        o = self.orders.get(oid)
        if o is None or o.expire_at != t:
            return  # filled, cancelled or re-timed since
        self._unrest(self.products[o.product_id], o)
        self._emit(OrderExpired, t, o.order_id, o.member, o.product_id, o.remaining)

    def _reopen(self, pb: ProductBook, t: int) -> None:
        """End of an auction (a volatility auction, or the day-ahead auction of call_then_continuous):
        clear it at one price, then trade continuously from what is left."""
        if pb.state is not _AUCTION_STATE or pb.auction_until != t:
            return  # the gate closed first
        self._auction(pb, t)
        pb.state = _OPEN_STATE
        pb.auction_until = 0
        self._emit(ProductStateChanged, t, pb.product.product_id, ProductState.OPEN.value)

    # ------------------------------------------------------------------ accounting
    def _rest(self, pb: ProductBook, o: Order) -> None:
        pb.book.add(o)
        self.orders[o.order_id] = o
        if o.expire_at is not None and o.expire_at < pb.product.gate_us:  # else the gate expires it
            self._push(o.expire_at, _EXPIRE, pb.product.start_us, str(o.order_id))
        if o.side is _SELL:
            if o.price < 0:  # o.exposure(), inline
                self.accounts[o.member].open_exposure += o.remaining * -o.price
            key = (o.product_id, o.member)
            self.open_sell[key] = self.open_sell.get(key, 0) + o.remaining
        elif o.price > 0:
            self.accounts[o.member].open_exposure += o.remaining * o.price

    def _unrest(self, pb: ProductBook, o: Order) -> None:
        if o.side is _SELL:
            if o.price < 0:  # o.exposure(), inline
                self.accounts[o.member].open_exposure -= o.remaining * -o.price
            self.open_sell[(o.product_id, o.member)] -= o.remaining
        elif o.price > 0:
            self.accounts[o.member].open_exposure -= o.remaining * o.price
        pb.book.remove(o)
        del self.orders[o.order_id]

    def _execute(self, pb: ProductBook, buy: Order, sell: Order, qty: int, price: int, aggressor: Aggressor,
                 t: int) -> None:
        """Book a trade of ``qty`` at ``price``. Quantities of the orders are reduced here;
        the caller accounts the fill of a resting order with its book. (Continuous matching
        books its trades inline, the same way: :meth:`_match`; a change here goes there too.
        tests/unit/test_engine_golden.py pins the journal's bytes.)"""
        accounts = self.accounts
        for o in (buy, sell):
            if o.live:  # a resting order: its exposure shrinks with its remaining quantity
                p = o.price if o.side is _BUY else -o.price
                if p > 0:
                    accounts[o.member].open_exposure -= qty * p
                if o.side is _SELL:
                    self.open_sell[(o.product_id, o.member)] -= qty
        buy.remaining -= qty
        sell.remaining -= qty
        value = qty * price
        pos = self.positions[pb.product.product_id]
        b = pos.get(buy.member)
        if b is None:
            b = pos[buy.member] = [0, 0, 0]
        b[0] += qty
        b[2] += value
        s = pos.get(sell.member)
        if s is None:
            s = pos[sell.member] = [0, 0, 0]
        s[1] += qty
        s[2] -= value
        accounts[buy.member].net_payable += value
        accounts[sell.member].net_payable -= value
        pb.ref_price = price
        if self._otr_on:
            for m in (buy.member, sell.member):
                c = pb.otr.get(m)
                if c is None:
                    c = pb.otr[m] = [0, 0]
                c[1] += 1
        tid = self.next_trade_id
        self.next_trade_id = TradeId(tid + 1)
        self.seq = seq = self.seq + 1  # _emit, inline
        self._out.append(TradeEvent(
            seq, t, tid, pb.product.product_id, price, qty, buy.order_id, sell.order_id, buy.member,
            sell.member, aggressor, buy.remaining, sell.remaining,
        ))

    # ------------------------------------------------------------------ checks
    def _check_member(self, member: MemberId) -> tuple[Reason, str] | None:
        acct = self.accounts.get(member)
        if acct is None:
            return Reason.UNKNOWN_MEMBER, f"member {member} is not registered"
        if acct.suspended:
            return Reason.MEMBER_SUSPENDED, f"member {member} is suspended"
        return None

    def _check_product(self, product_id: ProductId) -> tuple[Reason, str] | None:
        pb = self.products.get(product_id)
        if pb is None:
            return Reason.UNKNOWN_PRODUCT, f"no product {product_id}"
        if pb.state is not _OPEN_STATE:
            if pb.state is _AUCTION_STATE:  # a volatility auction: orders rest until it clears
                return None
            if pb.state is ProductState.PRE_OPEN:
                return Reason.PRODUCT_NOT_OPEN, f"product {product_id} is not open yet"
            return Reason.PRODUCT_CLOSED, f"product {product_id} is {pb.state.value}"
        return None

    def _check_price_qty(self, price: int, qty: int) -> tuple[Reason, str] | None:
        cfg = self.config
        if not cfg.price_min <= price <= cfg.price_max:
            return Reason.PRICE_OUT_OF_BOUNDS, f"price {price} outside [{cfg.price_min}, {cfg.price_max}] ticks"
        if qty < cfg.min_quantity:
            return Reason.QUANTITY_TOO_SMALL, f"quantity {qty} Wh below the minimum {cfg.min_quantity} Wh"
        if qty > cfg.max_quantity:
            return Reason.QUANTITY_TOO_LARGE, f"quantity {qty} Wh above the maximum {cfg.max_quantity} Wh"
        if qty % cfg.quantity_step:
            return Reason.QUANTITY_STEP, f"quantity {qty} Wh is not a multiple of {cfg.quantity_step} Wh"
        return None

    def _check_risk(self, pb: ProductBook, member: MemberId, side: Side, price: int, add_qty: int,
                    release: int = 0, release_sell: int = 0) -> tuple[Reason, str] | None:
        """Pre-trade check for ``add_qty`` more at ``price``; ``release`` is exposure (and
        ``release_sell`` open sell energy) freed by the order being replaced (modify)."""
        if not self.config.risk_checks:
            return None
        p = price if side is _BUY else -price
        err = self._check_collateral(member, add_qty * p if p > 0 else 0, release)
        if err is None and side is _SELL:
            err = self._check_capacity(pb, member, add_qty, release_sell)
        return err

    def _check_collateral(self, member: MemberId, need: int, release: int = 0) -> tuple[Reason, str] | None:
        """``need`` more money units backed by the member's collateral? (:meth:`_place` tests the
        same condition inline first, like the capacity check and the price controls: a change
        to a rule here goes there too.)"""
        if not need:
            return None
        acct = self.accounts[member]
        used = acct.open_exposure - release + max(acct.net_payable, 0)
        if used + need > acct.collateral:
            return (Reason.INSUFFICIENT_COLLATERAL,
                    f"needs {need} money units on top of {used} in use; collateral is {acct.collateral}")
        return None

    def _check_capacity(self, pb: ProductBook, member: MemberId, add_qty: int,
                        release_sell: int = 0) -> tuple[Reason, str] | None:
        """``add_qty`` Wh more to sell in ``pb`` within the member's export capacity?"""
        pid = pb.product.product_id
        cap = self.accounts[member].export_capacity_w * pb.capacity_factor // 60
        pos = self.positions[pid].get(member)
        net_sold = max(pos[1] - pos[0], 0) if pos else 0
        have = self.open_sell.get((pid, member), 0) - release_sell + net_sold
        if have + add_qty > cap:
            return (Reason.EXPORT_CAPACITY_EXCEEDED,
                    f"selling {add_qty} Wh more would exceed the export capacity of {cap} Wh "
                    f"for {pid} ({have} Wh already open or sold)")
        return None

    def _check_controls(self, pb: ProductBook, member: MemberId, side: Side, price: int,
                        qty: int) -> tuple[Reason, str] | None:
        """The pre-trade price controls (exchange.core.controls) for an order entry."""
        c = self.config.controls
        msg = controls.value_violation(c, price, qty)
        if msg is not None:
            return Reason.ORDER_VALUE_TOO_LARGE, msg
        if pb.ref_price is not None:  # no band before a product's first trade
            msg = controls.band_violation(c, pb.ref_price, side is _BUY, price)
            if msg is not None:
                return Reason.PRICE_OUTSIDE_BAND, msg
        if self._otr_on:
            msg = controls.otr_violation(c, pb.otr, member)
            if msg is not None:
                return Reason.ORDER_TO_TRADE_RATIO, msg
        return None

    def _count_entry(self, pb: ProductBook, member: MemberId) -> None:
        c = pb.otr.get(member)
        if c is None:
            c = pb.otr[member] = [0, 0]
        c[0] += 1

    def _check_conditions(self, cmd: PlaceOrder, ts: int) -> tuple[Reason, str] | None:
        """Post-only, good-till-date and minimum quantity: their shape (the engine decides the rest)."""
        if cmd.post_only is not True and cmd.post_only is not False:
            return Reason.INVALID_VALUE, "post_only must be a boolean"
        if (cmd.post_only or cmd.expire_at is not None) and cmd.tif is not _GTC:
            return Reason.INVALID_VALUE, "post_only and expire_time need tif gtc (they concern a resting order)"
        if cmd.expire_at is not None and (type(cmd.expire_at) is not int or cmd.expire_at <= ts):
            return Reason.INVALID_VALUE, "expire time must be in the future"
        if cmd.min_quantity is not None:
            if cmd.tif is not TimeInForce.IOC:
                return Reason.INVALID_VALUE, "min_quantity needs tif ioc (fok is all or nothing)"
            if type(cmd.min_quantity) is not int or not 1 <= cmd.min_quantity <= cmd.quantity:
                return Reason.INVALID_VALUE, "min_quantity must be between 1 and the order's quantity"
        return None

    def _would_trade(self, pb: ProductBook, side: Side, price: int) -> bool:
        book = pb.book
        if side is _BUY:
            ask = book.best_ask()
            return ask is not None and price >= ask
        bid = book.best_bid()
        return bid is not None and price <= bid

    def _use_nonce(self, member: MemberId, nonce: object) -> tuple[Reason, str] | None:
        """Check a signed order's nonce (above the member's last) and use it up."""
        acct = self.accounts[member]
        if type(nonce) is not int or nonce <= acct.last_nonce:
            return Reason.NONCE_REUSED, f"nonce {nonce} is not above the last one used ({acct.last_nonce})"
        acct.last_nonce = nonce  # consumed by this signed order, whatever its outcome
        return None

    # ------------------------------------------------------------------ handlers
    def _place(self, cmd: PlaceOrder, ts: int) -> None:
        member, coid = cmd.member, cmd.client_order_id
        terms = None
        if coid is not None:
            terms = _terms(cmd)  # once: the answer to a known id, or what the new id remembers
            if self._answered_by_client_id(ts, PlaceOrder.type, member, coid, terms):
                return
        # The checks in their order of precedence (the first failing one answers). The common
        # case (a known member, an open product, a valid price and quantity) is tested inline;
        # the _check_* helpers give the reason and its message when one fails.
        cfg = self.config
        side, tif, price, qty, nonce, pid = cmd.side, cmd.tif, cmd.price, cmd.quantity, cmd.nonce, cmd.product_id
        err = None
        if type(side) is not Side or type(tif) is not TimeInForce or type(price) is not int or type(qty) is not int:
            err = Reason.INVALID_VALUE, "side/tif must be enums and price/quantity integers"
        nonce_used = spent = False
        if nonce is not None and err is None and cfg.nonce_first and member in self.accounts:
            err = self._use_nonce(member, nonce)
            nonce_used = True
            spent = err is None
        if err is None and self.halted:
            err = Reason.MARKET_HALTED, f"market halted: {self.halt_reason}"
        pb = self.products.get(pid)
        acct = None
        if err is None:
            acct = self.accounts.get(member)
            if acct is None or acct.suspended:
                err = self._check_member(member)
            elif pb is None or (pb.state is not _OPEN_STATE and pb.state is not _AUCTION_STATE):
                err = self._check_product(pid)
            elif not cfg.price_min <= price <= cfg.price_max or qty < cfg.min_quantity or qty > cfg.max_quantity \
                    or qty % cfg.quantity_step:
                err = self._check_price_qty(price, qty)
        if err is None and (cmd.post_only or cmd.expire_at is not None or cmd.min_quantity is not None):
            err = self._check_conditions(cmd, ts)
        mech_call = cfg.mechanism is _CALL
        resting_only = mech_call or (pb is not None and pb.state is _AUCTION_STATE)
        if err is None and resting_only and tif is not _GTC:
            err = Reason.TIF_NOT_SUPPORTED, (f"{tif.value} is not supported in a call auction" if mech_call
                                             else f"{tif.value} is not supported during an auction")
        if nonce is not None and err is None and not nonce_used:
            err = self._use_nonce(member, nonce)
            spent = err is None
        buy = side is _BUY
        if err is None:
            assert pb is not None and acct is not None  # the member and product checks passed
            # The price controls and the risk checks, their common case inline: the helpers
            # (_check_controls, _check_collateral, _check_capacity) answer when one may fail.
            if self._controls_on:
                cc = cfg.controls
                ref = pb.ref_price
                if cc.max_order_value and (price if price >= 0 else -price) * qty > cc.max_order_value \
                        or self._otr_on:
                    err = self._check_controls(pb, member, side, price, qty)
                elif ref is not None and self._banded:  # no band before a product's first trade
                    w = (ref if ref >= 0 else -ref) * cc.price_band_bp // 10_000  # controls.width, inline
                    if w < cc.price_band_min_ticks:
                        w = cc.price_band_min_ticks
                    if (price > ref + w) if buy else (price < ref - w):
                        err = self._check_controls(pb, member, side, price, qty)
            if err is None and cfg.risk_checks:  # _check_risk, for a new order
                p = price if buy else -price
                if p > 0:
                    payable = acct.net_payable
                    if acct.open_exposure + (payable if payable > 0 else 0) + qty * p > acct.collateral:
                        err = self._check_collateral(member, qty * p)
                if err is None and not buy:
                    pos = self.positions[pid].get(member)
                    net_sold = pos[1] - pos[0] if pos else 0
                    have = self.open_sell.get((pid, member), 0) + (net_sold if net_sold > 0 else 0)
                    if have + qty > acct.export_capacity_w * pb.capacity_factor // 60:
                        err = self._check_capacity(pb, member, qty)
            if err is None and cmd.post_only and not resting_only and self._would_trade(pb, side, price):
                err = (Reason.POST_ONLY_WOULD_TRADE,
                       f"post-only {side.value} at {price} would trade against the book")
        if err is not None:
            self._reject(ts, member, PlaceOrder.type, err[0], err[1], client_order_id=coid, spent=spent)
            return
        assert pb is not None
        if self._otr_on:
            self._count_entry(pb, member)
        oid = self.next_order_id
        self.next_order_id = OrderId(oid + 1)
        o = Order(oid, member, pid, side, price, qty, tif, coid, cmd.signature, ts)
        if cmd.expire_at is not None:
            o.expire_at = cmd.expire_at
        self.seq = seq = self.seq + 1  # _emit, inline
        self._out.append(OrderAccepted(seq, ts, oid, member, pid, side, price, qty, tif, coid, cmd.signature))
        if cmd.delegation is not None:
            self._emit(OrderDelegated, ts, oid, member, cmd.delegation)
        if coid is not None:
            self._remember_client_id(member, coid, oid, seq, None, pid, terms if cfg.coid_terms else None)
        if resting_only:
            self._rest(pb, o)
        elif tif is _FOK or cmd.min_quantity is not None:
            self._continue(pb, o, ts, cmd.min_quantity)
        elif self._match(pb, o, ts):  # _continue, for a GTC or IOC order
            if o.remaining:
                if tif is _GTC:
                    self._rest(pb, o)
                else:
                    self._emit(OrderCancelled, ts, oid, member, pid, o.remaining, CancelReason.NOT_FILLED)
        elif o.remaining:  # stopped by self-trade prevention
            self._emit(OrderCancelled, ts, oid, member, pid, o.remaining, CancelReason.SELF_TRADE)

    def _continue(self, pb: ProductBook, o: Order, ts: int, min_fill: int | None = None) -> None:
        """Match an incoming (not resting) order, then rest or cancel its remainder. A FOK
        order, or an IOC order with ``min_fill``, that cannot trade that much now is cancelled whole."""
        need = o.remaining if o.tif is _FOK else min_fill
        if need is not None and self._fillable(pb, o) < need:
            self._emit(OrderCancelled, ts, o.order_id, o.member, o.product_id, o.remaining, CancelReason.NOT_FILLED)
            return
        if self._match(pb, o, ts):
            if o.remaining:
                if o.tif is _GTC:
                    self._rest(pb, o)
                else:
                    self._emit(OrderCancelled, ts, o.order_id, o.member, o.product_id, o.remaining,
                               CancelReason.NOT_FILLED)
        elif o.remaining:  # stopped by self-trade prevention
            self._emit(OrderCancelled, ts, o.order_id, o.member, o.product_id, o.remaining,
                       CancelReason.SELF_TRADE)

    def _fillable(self, pb: ProductBook, o: Order) -> int:
        """Volume an incoming order could trade now, honouring self-trade prevention."""
        stp = self.config.self_trade_prevention
        c = self.config.controls
        volatility = self._volatility_on
        ref = pb.ref_price
        buy = o.side is _BUY
        limit, member, want = o.price, o.member, o.remaining
        total = 0
        for price, lvl in pb.book.side_levels(_SELL if buy else _BUY):
            if (price > limit) if buy else (price < limit):
                break
            if volatility and triggers_interruption(c, ref, price):
                break  # matching would stop there (volatility interruption)
            ref = price
            for r in lvl.queue:  # its live orders, in time priority
                if not r.live:
                    continue
                if r.member == member and stp is not _STP_ALLOW:
                    if stp is _STP_CANCEL_OLDEST:
                        continue
                    return total
                total += r.remaining
                if total >= want:
                    return total
        return total

    def _match(self, pb: ProductBook, o: Order, ts: int) -> bool:
        """Match incoming ``o`` against the book. False if self-trade prevention stopped it.

        Level by level from the best of the other side while its price crosses ``o``'s
        limit, order by order in time priority; the book's levels account the fills
        (a filled order and an emptied level leave the book there and then). Each trade is
        booked as :meth:`_execute` books it (inline here: ``o`` is incoming, the resting
        order is the one whose exposure and open sell shrink)."""
        buy = o.side is _BUY
        best_level = pb.book.best_level
        opposite = _SELL if buy else _BUY
        limit = o.price
        lvl = best_level(opposite)
        if lvl is None or ((lvl.price > limit) if buy else (lvl.price < limit)):
            return True  # nothing crosses (the common case of a resting order)
        cfg = self.config
        stp = cfg.self_trade_prevention
        aggressor = o.side
        member = o.member
        orders = self.orders
        accounts = self.accounts
        open_sell = self.open_sell
        pid = pb.product.product_id
        pos = self.positions[pid]
        otr = pb.otr if self._otr_on else None
        out = self._out
        volatility = self._volatility_on
        cc = cfg.controls
        while o.remaining:
            if lvl is None:
                lvl = best_level(opposite)
                if lvl is None:
                    break
            price = lvl.price
            if (price > limit) if buy else (price < limit):
                break
            ref = pb.ref_price
            if volatility and ref is not None:  # controls.triggers_interruption, inline
                w = (ref if ref >= 0 else -ref) * cc.volatility_bp // 10_000
                if w < cc.volatility_min_ticks:
                    w = cc.volatility_min_ticks
                d = price - ref
                if (d if d >= 0 else -d) > w:
                    self._interrupt(pb, price, ts)
                    return True
            while o.remaining:
                r = lvl.head()
                if r is None:  # the level is empty and gone: on to the next one
                    break
                rm = r.member
                if rm == member and stp is not _STP_ALLOW:
                    if stp is not _STP_CANCEL_NEWEST:  # cancel the resting one
                        self._unrest(pb, r)
                        self._emit(OrderCancelled, ts, r.order_id, rm, r.product_id, r.remaining,
                                   CancelReason.SELF_TRADE)
                    if stp is not _STP_CANCEL_OLDEST:
                        return False
                    continue
                qty = o.remaining if o.remaining < r.remaining else r.remaining
                # _execute(pb, buy order, sell order, qty, price, aggressor, ts), inline
                if buy:  # the resting order sells
                    if price < 0:  # its exposure (a sell at a negative price) shrinks
                        accounts[rm].open_exposure -= qty * -price
                    open_sell[(r.product_id, rm)] -= qty
                    b_order, s_order = o, r
                else:
                    if price > 0:
                        accounts[rm].open_exposure -= qty * price
                    b_order, s_order = r, o
                o.remaining -= qty
                r.remaining -= qty
                bm, sm = b_order.member, s_order.member
                value = qty * price
                bp = pos.get(bm)
                if bp is None:
                    bp = pos[bm] = [0, 0, 0]
                bp[0] += qty
                bp[2] += value
                sp = pos.get(sm)
                if sp is None:
                    sp = pos[sm] = [0, 0, 0]
                sp[1] += qty
                sp[2] -= value
                accounts[bm].net_payable += value
                accounts[sm].net_payable -= value
                pb.ref_price = price
                if otr is not None:
                    for m in (bm, sm):
                        c = otr.get(m)
                        if c is None:
                            c = otr[m] = [0, 0]
                        c[1] += 1
                tid = self.next_trade_id
                self.next_trade_id = TradeId(tid + 1)
                self.seq = seq = self.seq + 1
                out.append(TradeEvent(seq, ts, tid, pid, price, qty, b_order.order_id, s_order.order_id, bm, sm,
                                      aggressor, b_order.remaining, s_order.remaining))
                if lvl.fill(r, qty):
                    del orders[r.order_id]
            lvl = None
        return True

    def _own_order(self, member: MemberId, order_id: OrderId) -> Order | None:
        o = self.orders.get(order_id)
        return o if o is not None and o.member == member else None

    def _cancel(self, cmd: CancelOrder, ts: int) -> None:
        blk = self.blocks.get(cmd.order_id)
        if blk is not None and blk.member == cmd.member:
            self._drop_block(blk)
            self._emit(OrderCancelled, ts, blk.order_id, blk.member, blk.product_ids[0], blk.quantity, CancelReason.USER)
            return
        o = self.orders.get(cmd.order_id)
        if o is None or o.member != cmd.member:
            self._reject(ts, cmd.member, CancelOrder.type, Reason.UNKNOWN_ORDER,
                         f"order {cmd.order_id} is not an open order of {cmd.member}", order_id=cmd.order_id)
            return
        self._unrest(self.products[o.product_id], o)
        self.seq = seq = self.seq + 1  # _emit, inline
        self._out.append(OrderCancelled(seq, ts, o.order_id, o.member, o.product_id, o.remaining, _USER))

    def _modify(self, cmd: ModifyOrder, ts: int) -> None:
        o = self._own_order(cmd.member, cmd.order_id)
        rej = ModifyOrder.type
        if o is None:
            self._reject(ts, cmd.member, rej, Reason.UNKNOWN_ORDER,
                         f"order {cmd.order_id} is not an open order of {cmd.member}", order_id=cmd.order_id)
            return
        price = o.price if cmd.price is None else cmd.price
        qty = o.remaining if cmd.quantity is None else cmd.quantity
        pb = self.products[o.product_id]
        err = None
        if type(price) is not int or type(qty) is not int:
            err = Reason.INVALID_VALUE, "price/quantity must be integers"
        elif self.halted:
            err = Reason.MARKET_HALTED, f"market halted: {self.halt_reason}"
        err = err or self._check_member(cmd.member) or self._check_price_qty(price, qty)
        if err is None and price == o.price and qty == o.remaining:
            err = Reason.NO_CHANGE, "the new price and quantity equal the order's"
        if err is None and self._controls_on:
            err = self._check_controls(pb, o.member, o.side, price, qty)
        if err is None:
            err = self._check_risk(pb, o.member, o.side, price, qty, release=o.exposure(),
                                   release_sell=o.remaining if o.side is _SELL else 0)
        if err is not None:
            self._reject(ts, cmd.member, rej, err[0], err[1], order_id=cmd.order_id)
            return
        if self._otr_on:
            self._count_entry(pb, o.member)
        if price == o.price and qty < o.remaining:
            # quantity down keeps time priority
            self.accounts[o.member].open_exposure -= o.exposure()
            if o.side is _SELL:
                self.open_sell[(o.product_id, o.member)] -= o.remaining - qty
            pb.book.reduce(o, qty)
            self.accounts[o.member].open_exposure += o.exposure()
            self._emit(OrderModified, ts, o.order_id, o.member, o.product_id, price, qty, True)
            return
        self._unrest(pb, o)
        n = o.clone()
        n.quantity = o.quantity - o.remaining + qty
        n.remaining = qty
        n.price = price
        n.ts = ts
        self._emit(OrderModified, ts, n.order_id, n.member, n.product_id, price, qty, False)
        if self.config.mechanism is _CALL or pb.state is _AUCTION_STATE:
            self._rest(pb, n)
        else:
            self._continue(pb, n, ts)

    def _cancel_all(self, cmd: CancelAll, ts: int) -> None:
        if cmd.product_id is not None and cmd.product_id not in self.products:
            self._reject(ts, cmd.member, CancelAll.type, Reason.UNKNOWN_PRODUCT, f"no product {cmd.product_id}")
            return
        reason = CancelReason.OPERATOR if cmd.by_operator else CancelReason.CANCEL_ALL
        n = self._cancel_member_orders(cmd.member, cmd.product_id, reason, ts)
        self._emit(CancelAllDone, ts, cmd.member, cmd.product_id, n)

    def _cancel_member_orders(self, member: MemberId, product_id: ProductId | None, reason: CancelReason,
                              ts: int) -> int:
        victims = [o for o in self.orders.values()
                   if o.member == member and (product_id is None or o.product_id == product_id)]
        for o in victims:
            self._unrest(self.products[o.product_id], o)
            self._emit(OrderCancelled, ts, o.order_id, o.member, o.product_id, o.remaining, reason)
        blocks = [b for b in self.blocks.values()
                  if b.member == member and (product_id is None or product_id in b.product_ids)]
        for b in blocks:
            self._drop_block(b)
            self._emit(OrderCancelled, ts, b.order_id, b.member, b.product_ids[0], b.quantity, reason)
        return len(victims) + len(blocks)

    def _register(self, cmd: RegisterMember, ts: int) -> None:
        if not cmd.member or (cmd.collateral is not None and cmd.collateral < 0) or cmd.export_capacity_w < 0:
            self._reject(ts, cmd.member, RegisterMember.type, Reason.INVALID_VALUE,
                         "member id must be non-empty; collateral and export capacity must be >= 0")
            return
        acct = self.accounts.get(cmd.member)
        if acct is None:
            acct = self.accounts[cmd.member] = Account(cmd.member)
        if cmd.collateral is not None:
            acct.collateral = cmd.collateral
        acct.export_capacity_w = cmd.export_capacity_w
        acct.suspended = cmd.suspended
        self._emit(MemberUpdated, ts, cmd.member, acct.collateral, cmd.export_capacity_w, cmd.suspended)
        if cmd.suspended:
            self._cancel_member_orders(cmd.member, None, CancelReason.SUSPENDED, ts)

    def _collateral(self, cmd: UpdateCollateral, ts: int) -> None:
        acct = self.accounts.get(cmd.member)
        if acct is None:
            self._reject(ts, cmd.member, UpdateCollateral.type, Reason.UNKNOWN_MEMBER,
                         f"member {cmd.member} is not registered")
            return
        if cmd.collateral < 0 or cmd.withdrawal < 0 or cmd.settlement_ref < 0:
            self._reject(ts, cmd.member, UpdateCollateral.type, Reason.INVALID_VALUE,
                         "collateral, withdrawal and settlement_ref must be >= 0")
            return
        settled = cmd.settled_payable
        if cmd.settlement_ref and cmd.settlement_ref <= acct.settlement_ref:
            settled = 0  # this batch's payable was applied already
        net_payable = acct.net_payable - settled
        if cmd.withdrawal:
            needed = acct.open_exposure + max(net_payable, 0)
            if cmd.collateral < needed:
                self._reject(ts, cmd.member, UpdateCollateral.type, Reason.INSUFFICIENT_COLLATERAL,
                             f"withdrawing {cmd.withdrawal} would leave {cmd.collateral}, below the {needed} "
                             "backing open buy orders and unsettled trades")
                return
        acct.collateral = cmd.collateral
        acct.net_payable = net_payable
        if cmd.settlement_ref > acct.settlement_ref:
            acct.settlement_ref = cmd.settlement_ref
        self._emit(CollateralUpdated, ts, cmd.member, acct.collateral, acct.net_payable)

    def _halt(self, cmd: Halt, ts: int) -> None:
        if self.halted:
            self._reject(ts, None, Halt.type, Reason.NO_CHANGE, "market is already halted")
            return
        self.halted, self.halt_reason = True, cmd.reason
        self._emit(MarketHalted, ts, cmd.reason)

    def _resume(self, cmd: Resume, ts: int) -> None:
        if not self.halted:
            self._reject(ts, None, Resume.type, Reason.NO_CHANGE, "market is not halted")
            return
        self.halted, self.halt_reason = False, ""
        self._emit(MarketResumed, ts)

    # ------------------------------------------------------------------ inspection
    def product_state(self, product_id: ProductId) -> ProductState | None:
        pb = self.products.get(product_id)
        return pb.state if pb else None

    def book(self, product_id: ProductId) -> OrderBook:
        return self.products[product_id].book

    def position(self, product_id: ProductId, member: MemberId) -> tuple[int, int, int]:
        p = self.positions.get(product_id, {}).get(member)
        return (p[0], p[1], p[2]) if p else (0, 0, 0)

    def _live_schedule(self) -> list[tuple[int, int, int, str]]:
        """The schedule without the entries that have become no-ops (a good-till-date order
        filled or cancelled since, a volatility auction the gate ended). Those leave the heap
        without an event, possibly in a command that is not journaled (a quiet rejection):
        the state hash must not depend on whether they are still there."""
        out = []
        for entry in self._schedule:
            t, kind, _, key = entry
            if kind == _REOPEN:
                pb = self.products.get(ProductId(key))
                if pb is None or pb.auction_until != t or pb.state in (ProductState.CLOSED, ProductState.DELIVERED):
                    continue
            elif kind == _EXPIRE:
                o = self.orders.get(OrderId(int(key)))
                if o is None or o.expire_at != t:
                    continue
            out.append(entry)
        return out

    # ------------------------------------------------------------------ snapshots
    #: Bumped whenever the exported state's layout changes: a snapshot of another version
    #: is not loaded (recovery falls back to an older one or to the full journal).
    STATE_VERSION = 3

    def export_state(self) -> JsonDict:
        """The complete state, JSON-able: :meth:`restore` rebuilds an engine that processes
        every later command exactly as this one would (same events, same :meth:`state_hash`).
        Everything whose order matters is kept in its order: live orders as they were rested
        (the books' time priority and the order of a member's cancel-all), client ids per
        product as they were remembered."""
        return {
            "version": self.STATE_VERSION,
            "config": self.config.to_dict(),
            "seq": self.seq,
            "now": self.now,
            "started": self.started,
            "next_order_id": self.next_order_id,
            "next_trade_id": self.next_trade_id,
            "halted": [self.halted, self.halt_reason],
            "products": [
                [pid, pb.product.delivery_day.isoformat(), pb.product.start_us, pb.product.end_us, pb.product.open_us,
                 pb.product.gate_us, pb.state.value, pb.ref_price, pb.auction_until, [[m, *c] for m, c in pb.otr.items()]]
                for pid, pb in self.products.items()],
            "orders": [[o.order_id, o.member, o.product_id, o.side.value, o.price, o.quantity, o.remaining, o.tif.value,
                        o.client_order_id, o.signature, o.ts, o.expire_at] for o in self.orders.values()],
            "accounts": [[a.member, a.collateral, a.export_capacity_w, a.suspended, a.open_exposure, a.net_payable,
                          a.last_nonce, a.settlement_ref] for a in self.accounts.values()],
            "client_ids": [[m, coid, *v] for (m, coid), v in self.client_ids.items()],
            "client_ids_by_product": [[pid, [list(k) for k in keys]] for pid, keys in self._client_ids_by_product.items()],
            "positions": [[pid, [[m, *v] for m, v in pos.items()]] for pid, pos in self.positions.items()],
            "open_sell": [[k[0], k[1], v] for k, v in self.open_sell.items()],
            "schedule": [list(x) for x in sorted(self._live_schedule())],
            "blocks": [b.export() for b in self.blocks.values()],
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> MarketEngine:
        """An engine in exactly the state :meth:`export_state` described."""
        if state.get("version") != cls.STATE_VERSION:
            raise ValueError(f"engine state version {state.get('version')!r}, expected {cls.STATE_VERSION}")
        e = cls(MarketConfig.from_dict(state["config"]))
        e.seq, e.now, e.started = state["seq"], state["now"], state["started"]
        e.next_order_id, e.next_trade_id = OrderId(state["next_order_id"]), TradeId(state["next_trade_id"])
        e.halted, e.halt_reason = state["halted"][0], state["halted"][1]
        for pid, day, start, end, open_us, gate, st, ref, until, otr in state["products"]:
            product = Product(ProductId(pid), date.fromisoformat(day), start, end, open_us, gate)
            pb = e.products[product.product_id] = ProductBook(product, ProductState(st))
            pb.ref_price, pb.auction_until = ref, until
            pb.otr = {MemberId(m): [n, f] for m, n, f in otr}
        for m, collateral, capacity, suspended, exposure, payable, nonce, ref in state["accounts"]:
            a = e.accounts[MemberId(m)] = Account(MemberId(m))
            a.collateral, a.export_capacity_w, a.suspended = collateral, capacity, suspended
            a.open_exposure, a.net_payable, a.last_nonce, a.settlement_ref = exposure, payable, nonce, ref
        for oid, m, pid, side, price, qty, remaining, tif, coid, sig, ts, expire_at in state["orders"]:
            o = Order(OrderId(oid), MemberId(m), ProductId(pid), Side(side), price, qty, TimeInForce(tif), coid, sig, ts)
            o.remaining, o.expire_at = remaining, expire_at
            e.products[o.product_id].book.add(o)  # accounts' exposure and open sells are restored as they were
            e.orders[o.order_id] = o
        e.client_ids = {(MemberId(m), coid): (None if oid is None else OrderId(oid), seq, reason, terms)
                        for m, coid, oid, seq, reason, terms in state["client_ids"]}
        e._client_ids_by_product = {ProductId(pid): [(MemberId(m), coid) for m, coid in keys]
                                    for pid, keys in state["client_ids_by_product"]}
        e.positions = {ProductId(pid): {MemberId(m): [b, s_, p] for m, b, s_, p in pos} for pid, pos in state["positions"]}
        e.open_sell = {(ProductId(pid), MemberId(m)): v for pid, m, v in state["open_sell"]}
        e._schedule = [(t, kind, start, key) for t, kind, start, key in state["schedule"]]
        heapq.heapify(e._schedule)
        for oid, m, pids, side, price, qty, coid, sig, ts in state["blocks"]:
            b = e.blocks[OrderId(oid)] = Block(OrderId(oid), MemberId(m), tuple(ProductId(p) for p in pids), Side(side),
                                               price, qty, coid, sig, ts)
            for p in b.product_ids:  # reservations are in the accounts and open sells already
                e._blocks_by_product.setdefault(p, []).append(b.order_id)
        return e

    def snapshot(self) -> JsonDict:
        """Canonical, JSON-able view of the whole state (what :meth:`state_hash` hashes)."""
        return {
            "market": self.config.market_id,
            "seq": self.seq,
            "next_order_id": self.next_order_id,
            "next_trade_id": self.next_trade_id,
            "halted": [self.halted, self.halt_reason],
            "products": [[pid, pb.state.value, pb.ref_price, pb.auction_until, sorted([m, *c] for m, c in pb.otr.items())]
                         for pid, pb in sorted(self.products.items())],
            "books": {pid: [o.snapshot() for o in pb.book.orders()] for pid, pb in sorted(self.products.items())},
            "accounts": [[a.member, a.collateral, a.export_capacity_w, a.suspended, a.open_exposure, a.net_payable,
                          a.last_nonce, a.settlement_ref] for _, a in sorted(self.accounts.items())],
            "positions": {pid: sorted([m, *v] for m, v in pos.items()) for pid, pos in sorted(self.positions.items())},
            "open_sell": sorted([k[0], k[1], v] for k, v in self.open_sell.items() if v),
            "client_ids": sorted([k[0], k[1], *v] for k, v in self.client_ids.items()),
            "schedule": sorted(self._live_schedule()),
            "blocks": [b.export() for _, b in sorted(self.blocks.items())],
        }

    def state_hash(self) -> str:
        blob = json.dumps(self.snapshot(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def check_invariants(self) -> None:
        """Internal consistency (used by tests): books uncrossed, level sums, risk sums."""
        exposure: dict[MemberId, int] = {}
        open_sell: dict[tuple[ProductId, MemberId], int] = {}
        live = 0
        for pid, pb in self.products.items():
            book = pb.book
            if self.config.mechanism is not Mechanism.CALL and pb.state is not _AUCTION_STATE:
                assert not book.is_crossed(), f"{pid} crossed"
            for side in (Side.BUY, Side.SELL):
                for price, lvl in book.side_levels(side):
                    orders = list(lvl.live_orders())
                    assert lvl.count == len(orders) > 0, (pid, price)
                    assert lvl.volume == sum(o.remaining for o in orders), (pid, price)
                    for o in orders:
                        assert o.price == price and o.side is side and o.remaining > 0
                        assert self.orders[o.order_id] is o
                        exposure[o.member] = exposure.get(o.member, 0) + o.exposure()
                        if side is Side.SELL:
                            open_sell[(pid, o.member)] = open_sell.get((pid, o.member), 0) + o.remaining
                        live += 1
        assert live == len(self.orders)
        for b in self.blocks.values():
            exposure[b.member] = exposure.get(b.member, 0) + b.exposure()
            for p in b.product_ids:
                assert b.order_id in self._blocks_by_product[p]
                if b.side is Side.SELL:
                    open_sell[(p, b.member)] = open_sell.get((p, b.member), 0) + b.quantity
        assert sum(map(len, self._blocks_by_product.values())) == sum(len(b.product_ids) for b in self.blocks.values())
        for m, a in self.accounts.items():
            assert a.open_exposure == exposure.get(m, 0), m
        assert {k: v for k, v in self.open_sell.items() if v} == open_sell
