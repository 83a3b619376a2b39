"""Example tests for the market engine's rules, one (or a few) per rule.

Every command goes through ``MarketEngine.process``; the default market is
Europe/Amsterdam with the day-ahead gate (D-1 12:00 local). At T0 =
2026-11-21 08:00 UTC the 24 products of local day 2026-11-22 are open (gate
2026-11-21 11:00 UTC), 2026-11-23 is listed but pre-open, and 2026-11-21 is
closed or delivered.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from support.times import GATE, T0

from exchange.core.calendar import CalendarConfig, GateMode, ProductState
from exchange.core.controls import PriceControls
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import (
    AuctionCleared,
    BlockAccepted,
    BlockResult,
    CancelAll,
    CancelAllDone,
    CancelOrder,
    CancelReason,
    CollateralUpdated,
    Duplicate,
    Halt,
    MarketHalted,
    MarketResumed,
    Mechanism,
    MemberUpdated,
    ModifyOrder,
    OrderAccepted,
    OrderCancelled,
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
from exchange.core.units import US_PER_MIN, to_us

pytestmark = pytest.mark.unit

UTC = UTC
BIG = 10**18
BIG_CAP = 10**9
BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK


class Mkt:
    """A started engine with helpers; every command advances the clock by 1 ms."""

    def __init__(self, members=("a", "b", "c"), collateral=BIG, capacity=BIG_CAP, **cfg) -> None:
        self.e = MarketEngine(MarketConfig(**cfg))
        self.t = T0
        self.e.process(Tick(T0))
        self.open = sorted(pid for pid, pb in self.e.products.items() if pb.state is ProductState.OPEN)
        self.p = self.open[0]
        for m in members:
            self.reg(m, collateral=collateral, cap=capacity)

    def do(self, cls, *args, **kw) -> list:
        self.t += 1000
        evs = self.e.process(cls(self.t, *args, **kw))
        self.e.check_invariants()
        return evs

    def reg(self, member, collateral=BIG, cap=BIG_CAP, suspended=False) -> list:
        return self.do(RegisterMember, member, collateral=collateral, export_capacity_w=cap, suspended=suspended)

    def place(self, member, side, price, qty, tif=GTC, product=None, coid=None) -> list:
        return self.do(PlaceOrder, member, product or self.p, side, price, qty, tif, coid)

    def rest(self, member, side, price, qty, product=None, coid=None) -> int:
        """Place a GTC order that must rest untouched; returns its id."""
        evs = self.place(member, side, price, qty, product=product, coid=coid)
        assert [type(x) for x in evs] == [OrderAccepted], evs
        return evs[0].order_id

    def tick(self, ts) -> list:
        self.t = ts
        evs = self.e.process(Tick(ts))
        self.e.check_invariants()
        return evs

    def book(self, product=None) -> list:
        """(order id, member, side, price, remaining) in priority order."""
        return [(o.order_id, o.member, o.side.value, o.price, o.remaining)
                for o in self.e.book(product or self.p).orders()]

    def acct(self, member):
        a = self.e.accounts[member]
        return a.collateral, a.open_exposure, a.net_payable


def of(evs, cls) -> list:
    return [x for x in evs if isinstance(x, cls)]


def trades(evs) -> list[tuple]:
    return [(t.buy_order_id, t.sell_order_id, t.price, t.quantity) for t in of(evs, TradeEvent)]


def core_state(e: MarketEngine) -> dict:
    """The snapshot without the bookkeeping a rejection may touch (seq, client ids)."""
    s = e.snapshot()
    s.pop("seq")
    s.pop("client_ids")
    return s


def assert_rejected(m: Mkt, cls, *args, reason: Reason, **kw) -> Rejected:
    before = core_state(m.e)
    whole = m.e.snapshot()
    books = {pid: m.book(pid) for pid in m.open}
    accounts = {k: m.acct(k) for k in m.e.accounts}
    evs = m.do(cls, *args, **kw)
    assert len(evs) == 1 and isinstance(evs[0], Rejected), evs
    assert evs[0].reason == reason.value
    assert evs[0].command == cls.type
    assert core_state(m.e) == before
    assert {pid: m.book(pid) for pid in m.open} == books
    assert {k: m.acct(k) for k in m.e.accounts} == accounts
    if m.e.config.quiet_rejections and kw.get("nonce") is None:
        # the quiet rule: nothing at all changed, the seq included (nothing to journal)
        assert m.e.snapshot() == whole and evs[0].seq == whole["seq"]
    return evs[0]


# =========================================================================== one test per Reason


def test_reason_market_halted_place_and_modify():
    m = Mkt()
    oid = m.rest("a", BUY, 1000, 10)
    m.do(Halt, "maintenance")
    rej = assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, reason=Reason.MARKET_HALTED)
    assert "maintenance" in rej.detail
    assert_rejected(m, ModifyOrder, "a", oid, price=1001, reason=Reason.MARKET_HALTED)


def test_reason_unknown_member():
    m = Mkt()
    assert_rejected(m, PlaceOrder, "ghost", m.p, BUY, 1000, 10, reason=Reason.UNKNOWN_MEMBER)
    assert_rejected(m, UpdateCollateral, "ghost", 100, reason=Reason.UNKNOWN_MEMBER)


def test_reason_member_suspended():
    m = Mkt()
    m.reg("a", suspended=True)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, reason=Reason.MEMBER_SUSPENDED)


def test_reason_unknown_product():
    m = Mkt()
    assert_rejected(m, PlaceOrder, "a", "20991122T0000Z-60", BUY, 1000, 10, reason=Reason.UNKNOWN_PRODUCT)
    assert_rejected(m, CancelAll, "a", "nope", reason=Reason.UNKNOWN_PRODUCT)


def test_reason_product_not_open():
    m = Mkt()
    pre = sorted(pid for pid, pb in m.e.products.items() if pb.product.delivery_day == date(2026, 11, 23))
    assert pre and all(m.e.products[p].state is ProductState.PRE_OPEN for p in pre)
    assert_rejected(m, PlaceOrder, "a", pre[0], BUY, 1000, 10, reason=Reason.PRODUCT_NOT_OPEN)


def test_reason_product_closed():
    m = Mkt()
    closed = [pid for pid, pb in m.e.products.items() if pb.state is ProductState.CLOSED]
    delivered = [pid for pid, pb in m.e.products.items() if pb.state is ProductState.DELIVERED]
    assert closed and delivered
    assert_rejected(m, PlaceOrder, "a", closed[0], SELL, 1000, 10, reason=Reason.PRODUCT_CLOSED)
    assert_rejected(m, PlaceOrder, "a", delivered[0], SELL, 1000, 10, reason=Reason.PRODUCT_CLOSED)


def test_reason_price_out_of_bounds():
    m = Mkt(price_min=-100, price_max=5000)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 5001, 10, reason=Reason.PRICE_OUT_OF_BOUNDS)
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, -101, 10, reason=Reason.PRICE_OUT_OF_BOUNDS)
    # the bounds themselves are allowed
    assert of(m.place("a", BUY, -100, 10), OrderAccepted)
    oid = m.rest("b", SELL, 5000, 10)
    assert_rejected(m, ModifyOrder, "b", oid, price=5001, reason=Reason.PRICE_OUT_OF_BOUNDS)


def test_reason_quantity_too_small():
    m = Mkt()
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 0, reason=Reason.QUANTITY_TOO_SMALL)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, -5, reason=Reason.QUANTITY_TOO_SMALL)
    m = Mkt(min_quantity=100)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 99, reason=Reason.QUANTITY_TOO_SMALL)
    oid = m.rest("a", BUY, 1000, 100)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=50, reason=Reason.QUANTITY_TOO_SMALL)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=0, reason=Reason.QUANTITY_TOO_SMALL)


def test_reason_quantity_too_large():
    m = Mkt(max_quantity=1000)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 1001, reason=Reason.QUANTITY_TOO_LARGE)
    oid = m.rest("a", BUY, 1000, 1000)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=1001, reason=Reason.QUANTITY_TOO_LARGE)


def test_reason_quantity_step():
    m = Mkt(quantity_step=100)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 150, reason=Reason.QUANTITY_STEP)
    oid = m.rest("a", BUY, 1000, 200)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=250, reason=Reason.QUANTITY_STEP)


@pytest.mark.parametrize("tif", [IOC, FOK])
def test_reason_tif_not_supported_in_call_auction(tif):
    m = Mkt(mechanism=Mechanism.CALL)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, tif, reason=Reason.TIF_NOT_SUPPORTED)
    assert of(m.place("a", BUY, 1000, 10, GTC), OrderAccepted)


def test_reason_insufficient_collateral():
    m = Mkt(collateral=10_000)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1001, 10, reason=Reason.INSUFFICIENT_COLLATERAL)
    assert of(m.place("a", BUY, 1000, 10), OrderAccepted)  # exactly the collateral


def test_reason_export_capacity_exceeded():
    m = Mkt(capacity=1000)  # 1000 W over a 60 min product = 1000 Wh
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, 1000, 1001, reason=Reason.EXPORT_CAPACITY_EXCEEDED)
    assert of(m.place("a", SELL, 1000, 1000), OrderAccepted)


def test_reason_unknown_order():
    m = Mkt()
    oid = m.rest("a", BUY, 1000, 10)
    assert_rejected(m, CancelOrder, "a", 999, reason=Reason.UNKNOWN_ORDER)
    assert_rejected(m, CancelOrder, "b", oid, reason=Reason.UNKNOWN_ORDER)  # not b's order
    assert_rejected(m, ModifyOrder, "b", oid, price=900, reason=Reason.UNKNOWN_ORDER)
    assert_rejected(m, ModifyOrder, "a", 999, price=900, reason=Reason.UNKNOWN_ORDER)
    m.do(CancelOrder, "a", oid)
    assert_rejected(m, CancelOrder, "a", oid, reason=Reason.UNKNOWN_ORDER)  # no longer open
    rej = assert_rejected(m, ModifyOrder, "a", oid, quantity=5, reason=Reason.UNKNOWN_ORDER)
    assert rej.order_id == oid


def test_reason_no_change():
    m = Mkt()
    oid = m.rest("a", BUY, 1000, 10)
    assert_rejected(m, ModifyOrder, "a", oid, reason=Reason.NO_CHANGE)
    assert_rejected(m, ModifyOrder, "a", oid, price=1000, quantity=10, reason=Reason.NO_CHANGE)
    assert_rejected(m, Resume, reason=Reason.NO_CHANGE)
    m.do(Halt, "x")
    assert_rejected(m, Halt, "again", reason=Reason.NO_CHANGE)


def test_reason_invalid_value():
    m = Mkt()
    assert_rejected(m, RegisterMember, "", collateral=1, reason=Reason.INVALID_VALUE)
    assert_rejected(m, RegisterMember, "d", collateral=-1, reason=Reason.INVALID_VALUE)
    assert_rejected(m, RegisterMember, "a", export_capacity_w=-1, reason=Reason.INVALID_VALUE)
    assert_rejected(m, UpdateCollateral, "a", -1, reason=Reason.INVALID_VALUE)
    assert "d" not in m.e.accounts


def test_reason_invalid_value_for_untyped_order_fields():
    m = Mkt()
    assert_rejected(m, PlaceOrder, "a", m.p, "buy", 1000, 10, reason=Reason.INVALID_VALUE)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000.0, 10, reason=Reason.INVALID_VALUE)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, True, reason=Reason.INVALID_VALUE)
    oid = m.rest("a", BUY, 1000, 10)
    assert_rejected(m, ModifyOrder, "a", oid, price=999.5, reason=Reason.INVALID_VALUE)


def test_reason_nonce_reused_for_signed_orders():
    m = Mkt()
    evs = m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=5)
    assert isinstance(evs[0], OrderAccepted) and evs[0].signature == "0xsig"
    rej = assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=5,
                          reason=Reason.NONCE_REUSED)
    assert "5" in rej.detail
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=4, reason=Reason.NONCE_REUSED)
    # another member has its own nonces; a higher nonce is fine
    assert isinstance(m.do(PlaceOrder, "b", m.p, BUY, 1000, 10, nonce=5)[0], OrderAccepted)
    assert isinstance(m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, nonce=9)[0], OrderAccepted)
    # a nonce is consumed when the order passes validation but fails the risk check
    m.reg("poor", collateral=0)
    assert m.do(PlaceOrder, "poor", m.p, BUY, 1000, 10, nonce=1)[0].reason == Reason.INSUFFICIENT_COLLATERAL.value
    assert_rejected(m, PlaceOrder, "poor", m.p, BUY, 1000, 10, nonce=1, reason=Reason.NONCE_REUSED)


@pytest.mark.parametrize("refusal", ["halted", "unknown_product", "price"])
def test_a_signed_orders_nonce_is_used_up_by_any_answer(refusal):
    """A signed order refused early (a halt, an unknown product, a bad price) cannot be replayed
    later: its nonce was used up by the refusal."""
    m = Mkt()
    pid, price = m.p, 1000
    if refusal == "halted":
        m.do(Halt, "maintenance")
    elif refusal == "unknown_product":
        pid = "nope"
    else:
        price = 10**9
    first = m.do(PlaceOrder, "a", pid, BUY, price, 10, signature="0xsig", nonce=7)
    assert isinstance(first[0], Rejected) and first[0].reason != Reason.NONCE_REUSED.value
    if refusal == "halted":
        m.do(Resume)
    again = assert_rejected(m, PlaceOrder, "a", pid, BUY, price, 10, signature="0xsig", nonce=7,
                            reason=Reason.NONCE_REUSED)
    assert "7" in again.detail
    assert isinstance(m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=8)[0], OrderAccepted)


def test_markets_stored_before_the_nonce_rule_replay_under_the_old_one():
    """A stored config without ``nonce_first`` (written before the rule) keeps the old order of
    checks, so an existing journal replays to the same events."""
    stored = MarketConfig().to_dict()
    del stored["nonce_first"]
    old = MarketConfig.from_dict(stored)
    assert old.nonce_first is False and MarketConfig.from_dict(MarketConfig().to_dict()).nonce_first is True
    m = Mkt(nonce_first=False)
    m.do(Halt, "maintenance")
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=7, reason=Reason.MARKET_HALTED)
    m.do(Resume)
    assert isinstance(m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, signature="0xsig", nonce=7)[0], OrderAccepted)


def test_every_reason_is_covered_by_a_test():
    names = [n for n in globals() if n.startswith("test_reason_")]
    for r in Reason:
        assert any(n.startswith(f"test_reason_{r.value.lower()}") for n in names), r


# =========================================================================== order conditions


def test_reason_post_only_would_trade_and_a_passive_post_only_rests():
    m = Mkt()
    m.rest("a", SELL, 1000, 10)
    r = assert_rejected(m, PlaceOrder, "b", m.p, BUY, 1000, 5, post_only=True, reason=Reason.POST_ONLY_WOULD_TRADE)
    assert "would trade" in r.detail
    assert_rejected(m, PlaceOrder, "b", m.p, BUY, 1200, 5, post_only=True, reason=Reason.POST_ONLY_WOULD_TRADE)
    m.do(PlaceOrder, "b", m.p, BUY, 999, 5, post_only=True)
    assert [o[3] for o in m.book()] == [999, 1000]
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, 999, 5, post_only=True, reason=Reason.POST_ONLY_WOULD_TRADE)
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, 1001, 5, IOC, post_only=True, reason=Reason.INVALID_VALUE)


def test_post_only_rests_in_a_call_auction_market():
    m = Mkt(mechanism=Mechanism.CALL)
    m.rest("a", SELL, 1000, 10)
    evs = m.do(PlaceOrder, "b", m.p, BUY, 1100, 5, post_only=True)
    assert isinstance(evs[0], OrderAccepted)


def test_good_till_date_expires_at_its_time_and_not_before():
    m = Mkt()
    until = m.t + 10_000_000
    evs = m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, expire_at=until)
    oid = evs[0].order_id
    m.tick(until - 1)
    assert [o[0] for o in m.book()] == [oid]
    (ex,) = of(m.tick(until), OrderExpired)
    assert (ex.order_id, ex.remaining, ex.ts) == (oid, 10, until) and m.book() == []
    assert m.e.accounts["a"].open_exposure == 0


def test_good_till_date_survives_a_partial_fill_and_a_modify_then_expires_once():
    m = Mkt()
    until = m.t + 10_000_000
    oid = m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, expire_at=until)[0].order_id
    m.place("b", SELL, 1000, 4)
    m.do(ModifyOrder, "a", oid, price=990)  # loses priority, keeps its expiry
    evs = m.tick(until)
    assert [(x.order_id, x.remaining) for x in of(evs, OrderExpired)] == [(oid, 6)]
    assert not of(m.tick(until + 1000), OrderExpired)  # expired once, though it was rested twice


def test_good_till_date_filled_or_cancelled_first_does_nothing_at_its_time():
    m = Mkt()
    until = m.t + 10_000_000
    oid = m.do(PlaceOrder, "a", m.p, BUY, 1000, 10, expire_at=until)[0].order_id
    m.do(CancelOrder, "a", oid)
    assert not of(m.tick(until), OrderExpired)


def test_good_till_date_shape_rules():
    m = Mkt()
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, expire_at=m.t, reason=Reason.INVALID_VALUE)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1000, 10, IOC, expire_at=m.t + 10**9, reason=Reason.INVALID_VALUE)


def test_minimum_quantity_ioc_trades_only_if_enough_is_there():
    m = Mkt()
    m.rest("a", SELL, 1000, 3)
    m.rest("a", SELL, 1001, 3)
    evs = m.do(PlaceOrder, "b", m.p, BUY, 1001, 10, IOC, min_quantity=7)
    assert trades(evs) == [] and of(evs, OrderCancelled)[0].reason is CancelReason.NOT_FILLED
    evs = m.do(PlaceOrder, "b", m.p, BUY, 1001, 10, IOC, min_quantity=6)
    assert [t[3] for t in trades(evs)] == [3, 3] and of(evs, OrderCancelled)[0].remaining == 4
    assert_rejected(m, PlaceOrder, "b", m.p, BUY, 1001, 10, GTC, min_quantity=6, reason=Reason.INVALID_VALUE)
    assert_rejected(m, PlaceOrder, "b", m.p, BUY, 1001, 10, IOC, min_quantity=11, reason=Reason.INVALID_VALUE)


def test_reason_client_order_id_reused_with_other_terms():
    m = Mkt()
    oid = m.rest("a", BUY, 1000, 10, coid="x")
    r = assert_rejected(m, PlaceOrder, "a", m.p, BUY, 1001, 10, GTC, "x", reason=Reason.CLIENT_ORDER_ID_REUSED)
    assert r.order_id == oid and "1000" in r.detail and "1001" in r.detail
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, 1000, 10, GTC, "x", reason=Reason.CLIENT_ORDER_ID_REUSED)
    before = m.e.snapshot()
    (d,) = m.place("a", BUY, 1000, 10, coid="x")  # the same terms: the original outcome
    assert isinstance(d, Duplicate) and d.order_id == oid
    assert d.seq == before["seq"] and m.e.snapshot() == before  # a duplicate changes nothing: not journaled
    m2 = Mkt(coid_terms=False, quiet_rejections=False)  # a market stored before the rule
    m2.rest("a", BUY, 1000, 10, coid="x")
    (d2,) = m2.place("a", BUY, 1001, 10, coid="x")
    assert isinstance(d2, Duplicate)


# =========================================================================== day-ahead then intraday


def hybrid() -> Mkt:
    m = Mkt(mechanism=Mechanism.CALL_THEN_CONTINUOUS, calendar=CalendarConfig(gate=GateMode.ROLLING))
    m.auction = sorted(pid for pid, pb in m.e.products.items() if pb.state is ProductState.AUCTION)
    return m


def test_call_then_continuous_needs_the_rolling_gate():
    with pytest.raises(ValueError, match="rolling"):
        MarketConfig(mechanism=Mechanism.CALL_THEN_CONTINUOUS)


def test_day_ahead_auction_then_continuous_from_what_is_left():
    m = hybrid()
    # at T0 (D-1 09:00 local) the next day's products collect orders for the day-ahead auction;
    # today's products trade continuously (nothing is closed for half a day any more)
    assert len(m.auction) == 24 and len(m.open) > 0
    p = m.auction[5]
    pb = m.e.products[p]
    assert pb.auction_until == GATE  # D-1 12:00 local
    b1 = m.do(PlaceOrder, "a", p, BUY, 1200, 10)[0].order_id
    b2 = m.do(PlaceOrder, "a", p, BUY, 1000, 10)[0].order_id
    s1 = m.do(PlaceOrder, "b", p, SELL, 900, 15)[0].order_id
    m.do(PlaceOrder, "b", p, SELL, 1300, 5)
    assert m.e.book(p).is_crossed()  # collected, not matched
    r = m.do(PlaceOrder, "c", p, BUY, 2000, 1, IOC)[0]
    assert isinstance(r, Rejected) and r.reason == Reason.TIF_NOT_SUPPORTED.value
    evs = [x for x in m.tick(GATE) if getattr(x, "product_id", None) == p]
    (ac,) = of(evs, AuctionCleared)
    assert ac.volume == 15 and all(t.price == ac.price for t in of(evs, TradeEvent))
    assert {t.aggressor for t in of(evs, TradeEvent)} == {"auction"}
    assert m.e.product_state(p) is ProductState.OPEN
    assert not m.e.book(p).is_crossed()
    # what is left: 5 of the 1000 bid and the 1300 ask; continuous trading starts from it
    assert [(o[0], o[4]) for o in m.book(p) if o[2] == "buy"] == [(b2, 5)]
    assert s1 not in {o[0] for o in m.book(p)} and b1 not in {o[0] for o in m.book(p)}
    evs = m.do(PlaceOrder, "c", p, SELL, 1000, 5, IOC)
    assert trades(evs) == [(b2, of(evs, OrderAccepted)[0].order_id, 1000, 5)]
    # the intraday gate closes the product as usual
    evs = m.tick(pb.product.gate_us)
    assert m.e.product_state(p) is ProductState.CLOSED and of(evs, OrderExpired)


def test_day_ahead_auction_with_nothing_crossing_opens_continuous_trading_with_the_book():
    m = hybrid()
    p = m.auction[0]
    m.do(PlaceOrder, "a", p, BUY, 900, 10)
    m.do(PlaceOrder, "b", p, SELL, 1000, 10)
    evs = [x for x in m.tick(GATE) if getattr(x, "product_id", None) == p]
    assert of(evs, AuctionCleared)[0].price is None and len(m.book(p)) == 2
    assert m.e.product_state(p) is ProductState.OPEN


# =========================================================================== block orders


def block(m: Mkt, member, hours, side, price, qty, coid=None) -> list:
    return m.do(PlaceBlock, member, list(hours), side, price, qty, coid)


def test_a_block_executes_whole_at_each_hours_clearing_price_when_the_average_is_within_its_limit():
    m = hybrid()
    h = m.auction[8:11]  # three consecutive hours
    for p, price in zip(h, (900, 1000, 1100)):  # sellers: 10 Wh in each hour
        m.do(PlaceOrder, "b", p, SELL, price, 10)
    (acc,) = block(m, "a", h, BUY, 1000, 10)  # average of 900, 1000, 1100 = 1000: within the limit
    assert isinstance(acc, BlockAccepted) and acc.product_ids == h
    assert m.e.accounts["a"].open_exposure == 10 * 3 * 1000  # reserved for the auction
    evs = m.tick(GATE)
    (res,) = of(evs, BlockResult)
    assert res.executed and res.prices == [900, 1000, 1100] and res.order_id == acc.order_id
    fills = [(t.product_id, t.price, t.quantity) for t in of(evs, TradeEvent) if t.buy_order_id == acc.order_id]
    assert fills == [(h[0], 900, 10), (h[1], 1000, 10), (h[2], 1100, 10)]
    assert m.e.accounts["a"].open_exposure == 0 and not m.e.blocks
    assert m.e.position(h[1], "a") == (10, 0, 10 * 1000)


def test_a_block_is_all_or_none_never_partly_filled():
    m = hybrid()
    h = m.auction[8:11]
    m.do(PlaceOrder, "b", h[0], SELL, 900, 10)
    m.do(PlaceOrder, "b", h[1], SELL, 900, 10)
    m.do(PlaceOrder, "b", h[2], SELL, 900, 4)  # not enough in the last hour
    (acc,) = block(m, "a", h, BUY, 2000, 10)
    evs = m.tick(GATE)
    (res,) = of(evs, BlockResult)
    assert not res.executed and "could not fill" in res.detail
    assert not [t for t in of(evs, TradeEvent) if acc.order_id in (t.buy_order_id, t.sell_order_id)]
    assert m.e.accounts["a"].open_exposure == 0 and m.e.position(h[0], "a") == (0, 0, 0)


def test_a_block_whose_average_price_exceeds_its_limit_is_not_executed():
    m = hybrid()
    h = m.auction[8:10]
    m.do(PlaceOrder, "b", h[0], SELL, 900, 10)
    m.do(PlaceOrder, "b", h[1], SELL, 1200, 10)
    block(m, "a", h, BUY, 1049, 10)  # average 1050 > 1049
    assert not of(m.tick(GATE), BlockResult)[0].executed


def test_blocks_are_decided_in_time_priority_and_an_earlier_block_keeps_its_fill():
    m = hybrid()
    h = m.auction[8:10]
    for p in h:
        m.do(PlaceOrder, "b", p, SELL, 1000, 10)
    (first,) = block(m, "a", h, BUY, 1000, 10)
    (second,) = block(m, "c", h, BUY, 1500, 10)  # higher, but later: there is energy for one block only
    res = {r.order_id: r.executed for r in of(m.tick(GATE), BlockResult)}
    assert res == {first.order_id: True, second.order_id: False}


def test_sell_blocks_and_hourly_bids():
    m = hybrid()
    h = m.auction[3:6]
    for p in h:
        m.do(PlaceOrder, "b", p, BUY, 1000, 5)
    (acc,) = block(m, "a", h, SELL, 950, 5)
    evs = m.tick(GATE)
    assert of(evs, BlockResult)[0].executed
    assert {t.price for t in of(evs, TradeEvent) if t.sell_order_id == acc.order_id} == {1000}


def test_block_orders_can_be_cancelled_before_the_auction():
    m = hybrid()
    h = m.auction[8:10]
    (acc,) = block(m, "a", h, BUY, 1000, 10)
    (c,) = m.do(CancelOrder, "a", acc.order_id)
    assert isinstance(c, OrderCancelled) and c.order_id == acc.order_id and m.e.accounts["a"].open_exposure == 0
    assert not of(m.tick(GATE), BlockResult)
    (acc2,) = block(hybrid(), "a", h, BUY, 1000, 10)
    assert isinstance(acc2, BlockAccepted)


def test_reason_block_not_allowed():
    m = hybrid()
    h = m.auction
    r = assert_rejected(m, PlaceBlock, "a", [h[0], h[2]], BUY, 1000, 1, reason=Reason.BLOCK_NOT_ALLOWED)
    assert "consecutive" in r.detail
    assert_rejected(m, PlaceBlock, "a", m.open[:2], BUY, 1000, 1, reason=Reason.BLOCK_NOT_ALLOWED)  # continuous
    assert_rejected(m, PlaceBlock, "a", [h[0]], BUY, 1000, 1, reason=Reason.INVALID_VALUE)
    assert_rejected(Mkt(), PlaceBlock, "a", Mkt().open[:2], BUY, 1000, 1, reason=Reason.BLOCK_NOT_ALLOWED)


def test_block_orders_in_a_call_market_clear_at_the_gate():
    m = Mkt(mechanism=Mechanism.CALL)
    h = m.open[8:10]
    for p in h:
        m.do(PlaceOrder, "b", p, SELL, 1000, 10)
    (acc,) = block(m, "a", h, BUY, 1000, 10)
    evs = m.tick(GATE)
    assert of(evs, BlockResult)[0].executed
    assert len(of(evs, AuctionCleared)) == 24  # each product cleared once, the block's hours jointly


def test_block_collateral_is_reserved():
    m = hybrid()
    m.reg("poor", collateral=10 * 2 * 1000 - 1)
    assert_rejected(m, PlaceBlock, "poor", m.auction[8:10], BUY, 1000, 10, reason=Reason.INSUFFICIENT_COLLATERAL)


# =========================================================================== price controls


def controlled(**c) -> Mkt:
    return Mkt(controls=PriceControls(**c))


def test_reason_price_outside_band_only_for_aggressive_prices():
    m = controlled(price_band_bp=1000, price_band_min_ticks=50)  # +-10 % of |ref|, at least 50 ticks
    m.rest("a", SELL, 1000, 10)
    m.place("b", BUY, 1000, 10)  # a trade at 1000: the reference
    assert m.e.products[m.p].ref_price == 1000
    r = assert_rejected(m, PlaceOrder, "b", m.p, BUY, 1101, 5, GTC, "hi", reason=Reason.PRICE_OUTSIDE_BAND)
    assert "1100" in r.detail and r.client_order_id == "hi"
    assert_rejected(m, PlaceOrder, "a", m.p, SELL, 899, 5, reason=Reason.PRICE_OUTSIDE_BAND)
    m.rest("b", BUY, 1100, 1)  # on the limits: accepted
    m.rest("a", SELL, 1200, 1)  # passive prices are not limited
    m.rest("b", BUY, 10, 1)


def test_price_band_has_a_minimum_width_near_zero_and_none_without_reference():
    m = controlled(price_band_bp=1000, price_band_min_ticks=50)
    m.rest("b", BUY, 100_000, 1)  # no trade yet: no reference, no band
    m.place("a", SELL, 0, 1)  # trades at 100_000? no: at the resting buy's price
    assert m.e.products[m.p].ref_price == 100_000
    m2 = controlled(price_band_bp=1000, price_band_min_ticks=50)
    m2.rest("a", SELL, 0, 1)
    m2.place("b", BUY, 0, 1)  # reference 0: the band is the minimum, 50 ticks
    m2.rest("b", BUY, 50, 1)
    assert_rejected(m2, PlaceOrder, "b", m2.p, BUY, 51, 1, reason=Reason.PRICE_OUTSIDE_BAND)
    assert_rejected(m2, PlaceOrder, "a", m2.p, SELL, -51, 1, reason=Reason.PRICE_OUTSIDE_BAND)


def test_price_band_applies_to_modify():
    m = controlled(price_band_min_ticks=100)
    m.rest("a", SELL, 1000, 10)
    m.place("b", BUY, 1000, 5)
    oid = m.rest("b", BUY, 900, 5)
    assert_rejected(m, ModifyOrder, "b", oid, price=1101, reason=Reason.PRICE_OUTSIDE_BAND)
    (mod, tr) = m.do(ModifyOrder, "b", oid, price=1000)[:2]
    assert isinstance(mod, OrderModified) and isinstance(tr, TradeEvent)


def test_reason_order_value_too_large():
    m = controlled(max_order_value=1_000_000)  # 0.01 EUR
    m.rest("a", SELL, 1000, 1000)  # value exactly the limit
    r = assert_rejected(m, PlaceOrder, "a", m.p, SELL, 1000, 1001, reason=Reason.ORDER_VALUE_TOO_LARGE)
    assert "1001000" in r.detail
    assert_rejected(m, PlaceOrder, "b", m.p, BUY, -1001, 1000, reason=Reason.ORDER_VALUE_TOO_LARGE)  # |price|
    oid = m.rest("b", BUY, 500, 10)
    assert_rejected(m, ModifyOrder, "b", oid, quantity=2001, reason=Reason.ORDER_VALUE_TOO_LARGE)


def test_reason_order_to_trade_ratio_counts_entries_and_modifications_per_product():
    m = controlled(otr_max=2, otr_free=3)
    ids = [m.rest("a", BUY, 100 + i, 1) for i in range(2)]
    m.do(ModifyOrder, "a", ids[0], price=90)  # the third entry
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 100, 1, reason=Reason.ORDER_TO_TRADE_RATIO)
    assert_rejected(m, ModifyOrder, "a", ids[1], price=95, reason=Reason.ORDER_TO_TRADE_RATIO)
    assert isinstance(m.do(CancelOrder, "a", ids[1])[0], OrderCancelled)  # cancels are never refused
    m.rest("a", BUY, 100, 1, product=m.open[1])  # another product: its own count
    m.rest("b", SELL, 100, 1)  # b is not affected
    m.place("a", SELL, 90, 1)  # no: a's entries are used up in this product
    m.place("c", SELL, 90, 1)  # c sells to a's resting bid: a has one fill, so two entries more
    assert m.e.products[m.p].otr["a"] == [3, 1]
    m.rest("a", BUY, 10, 1)
    m.rest("a", BUY, 11, 1)
    assert_rejected(m, PlaceOrder, "a", m.p, BUY, 12, 1, reason=Reason.ORDER_TO_TRADE_RATIO)


def test_order_to_trade_counts_are_freed_at_delivery():
    m = controlled(otr_max=1, otr_free=1)
    m.rest("a", BUY, 100, 1)
    pb = m.e.products[m.p]
    assert pb.otr
    m.tick(pb.product.end_us)
    assert pb.otr == {}


def test_volatility_interruption_stops_matching_then_an_auction_reopens_the_product():
    m = controlled(volatility_bp=1000, volatility_auction_s=60)  # +-10 % around the last price
    m.rest("a", SELL, 1000, 10)
    m.place("b", BUY, 1000, 5)  # reference 1000
    m.rest("a", SELL, 1050, 5)  # within 10 %
    far = m.rest("a", SELL, 1200, 5)  # beyond 10 % of 1050
    evs = m.place("b", BUY, 1300, 20)
    # 5 at 1000, 5 at 1050 (the reference moves with each trade), then 1200 would leave the range
    assert [t[2:] for t in trades(evs)] == [(1000, 5), (1050, 5)]
    (vi,) = of(evs, VolatilityInterruption)
    assert (vi.price, vi.reference, vi.until) == (1200, 1050, m.t + 60_000_000)
    assert of(evs, ProductStateChanged)[0].state == "auction"
    assert m.e.product_state(m.p) is ProductState.AUCTION
    buy = of(evs, OrderAccepted)[0].order_id
    assert sorted(m.book()) == [(far, "a", "sell", 1200, 5), (buy, "b", "buy", 1300, 10)]  # crossed, resting
    # during the auction: orders rest, IOC/FOK are refused
    assert isinstance(m.place("c", BUY, 1250, 5)[0], OrderAccepted)
    assert_rejected(m, PlaceOrder, "c", m.p, BUY, 1250, 5, IOC, reason=Reason.TIF_NOT_SUPPORTED)
    # the auction clears at one price when it ends, then the product trades continuously again
    evs = m.tick(vi.until)
    (ac,) = of(evs, AuctionCleared)
    assert ac.price is not None and ac.volume == 5
    assert {t.price for t in of(evs, TradeEvent)} == {ac.price}
    assert of(evs, ProductStateChanged)[-1].state == "open"
    assert m.e.products[m.p].ref_price == ac.price and not m.e.book(m.p).is_crossed()


def test_volatility_auction_still_running_at_gate_closure_clears_there():
    m = controlled(volatility_min_ticks=10, volatility_auction_s=10**6)
    m.rest("a", SELL, 1000, 1)
    m.place("b", BUY, 1000, 1)
    m.rest("a", SELL, 1100, 1)
    m.place("b", BUY, 1100, 1)
    assert m.e.product_state(m.p) is ProductState.AUCTION
    evs = m.tick(m.e.products[m.p].product.gate_us)
    assert of(evs, AuctionCleared)[0].volume == 1 and of(evs, TradeEvent)[0].price in (1000, 1100)
    assert m.e.product_state(m.p) is ProductState.CLOSED
    m.tick(m.e.products[m.p].product.end_us + 10**7)  # the reopen time passes: nothing happens
    assert m.e.product_state(m.p) is ProductState.DELIVERED


def test_fok_that_would_run_into_the_volatility_range_is_killed_whole():
    m = controlled(volatility_min_ticks=10)
    m.rest("a", SELL, 1000, 1)
    m.place("b", BUY, 1000, 1)
    m.rest("a", SELL, 1005, 1)
    m.rest("a", SELL, 1100, 1)
    evs = m.place("b", BUY, 1100, 2, FOK)
    assert trades(evs) == [] and of(evs, OrderCancelled)[0].reason is CancelReason.NOT_FILLED
    assert m.e.product_state(m.p) is ProductState.OPEN


# =========================================================================== matching


def test_partial_fill_of_resting_order():
    m = Mkt()
    s = m.rest("a", SELL, 1000, 100)
    evs = m.place("b", BUY, 1000, 40)
    b = of(evs, OrderAccepted)[0].order_id
    (t,) = of(evs, TradeEvent)
    assert (t.buy_order_id, t.sell_order_id, t.price, t.quantity) == (b, s, 1000, 40)
    assert (t.buy_remaining, t.sell_remaining, t.buyer, t.seller, t.aggressor) == (0, 60, "b", "a", "buy")
    assert m.book() == [(s, "a", "sell", 1000, 60)]
    assert m.e.book(m.p).depth(SELL) == [(1000, 60, 1)]


def test_partial_fill_of_incoming_order_rests_remainder():
    m = Mkt()
    s = m.rest("a", SELL, 1000, 30)
    evs = m.place("b", BUY, 1000, 100)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, s, 1000, 30)]
    assert m.book() == [(b, "b", "buy", 1000, 70)]


def test_trade_at_resting_price_and_walks_levels():
    m = Mkt()
    s1 = m.rest("a", SELL, 1000, 10)
    s2 = m.rest("a", SELL, 1010, 10)
    s3 = m.rest("a", SELL, 1100, 10)
    evs = m.place("b", BUY, 1050, 25)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, s1, 1000, 10), (b, s2, 1010, 10)]
    assert m.book() == [(b, "b", "buy", 1050, 5), (s3, "a", "sell", 1100, 10)]
    # a sell into bids trades at the bid's price
    evs = m.place("c", SELL, 900, 5)
    c = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, c, 1050, 5)]
    assert of(evs, TradeEvent)[0].aggressor == "sell"


def test_same_price_fifo():
    m = Mkt()
    first = m.rest("a", SELL, 1000, 10)
    second = m.rest("c", SELL, 1000, 10)
    evs = m.place("b", BUY, 1000, 15)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, first, 1000, 10), (b, second, 1000, 5)]


def test_ioc_remainder_cancelled_not_filled():
    m = Mkt()
    s = m.rest("a", SELL, 1000, 10)
    evs = m.place("b", BUY, 1000, 25, IOC)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, s, 1000, 10)]
    (c,) = of(evs, OrderCancelled)
    assert (c.order_id, c.remaining, c.reason) == (b, 15, CancelReason.NOT_FILLED.value)
    assert m.book() == []
    assert b not in m.e.orders


def test_ioc_with_nothing_to_match_is_cancelled():
    m = Mkt()
    evs = m.place("b", BUY, 1000, 25, IOC)
    assert [type(x) for x in evs] == [OrderAccepted, OrderCancelled]
    assert evs[1].reason == "not_filled" and evs[1].remaining == 25


def test_fok_killed_when_not_fully_fillable():
    m = Mkt()
    s1 = m.rest("a", SELL, 1000, 10)
    s2 = m.rest("c", SELL, 1020, 10)
    m.rest("c", SELL, 1100, 100)  # beyond the limit
    before = m.book()
    evs = m.place("b", BUY, 1050, 21, FOK)
    assert of(evs, TradeEvent) == []
    (c,) = of(evs, OrderCancelled)
    assert (c.remaining, c.reason) == (21, "not_filled")
    assert m.book() == before
    assert m.e.position(m.p, "b") == (0, 0, 0)
    # exactly fillable: filled completely
    evs = m.place("b", BUY, 1050, 20, FOK)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, s1, 1000, 10), (b, s2, 1020, 10)]
    assert of(evs, OrderCancelled) == []
    assert m.e.position(m.p, "b") == (20, 0, 10 * 1000 + 10 * 1020)


def test_fok_filled_when_fillable_with_extra_depth():
    m = Mkt()
    s = m.rest("a", SELL, 1000, 100)
    evs = m.place("b", BUY, 1000, 30, FOK)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, s, 1000, 30)]
    assert m.book() == [(s, "a", "sell", 1000, 70)]


# =========================================================================== modify


def test_modify_quantity_down_keeps_priority():
    m = Mkt()
    first = m.rest("a", SELL, 1000, 10)
    second = m.rest("c", SELL, 1000, 10)
    evs = m.do(ModifyOrder, "a", first, quantity=4)
    (mod,) = evs
    assert isinstance(mod, OrderModified) and mod.priority_kept and mod.quantity == 4 and mod.price == 1000
    assert m.book() == [(first, "a", "sell", 1000, 4), (second, "c", "sell", 1000, 10)]
    evs = m.place("b", BUY, 1000, 6)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, first, 1000, 4), (b, second, 1000, 2)]


def test_modify_price_change_loses_priority():
    m = Mkt()
    first = m.rest("a", SELL, 1000, 10)
    second = m.rest("c", SELL, 1001, 10)
    (mod,) = m.do(ModifyOrder, "a", first, price=1001)
    assert not mod.priority_kept and mod.price == 1001
    evs = m.place("b", BUY, 1001, 10)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, second, 1001, 10)]
    # and back: moving to the same price as another order puts it behind that order
    third = m.rest("c", SELL, 1001, 10)
    assert [o[0] for o in m.book()] == [first, third]


def test_modify_quantity_up_loses_priority():
    m = Mkt()
    first = m.rest("a", SELL, 1000, 10)
    second = m.rest("c", SELL, 1000, 10)
    (mod,) = m.do(ModifyOrder, "a", first, quantity=11)
    assert not mod.priority_kept and mod.quantity == 11
    assert m.book() == [(second, "c", "sell", 1000, 10), (first, "a", "sell", 1000, 11)]
    evs = m.place("b", BUY, 1000, 12)
    b = of(evs, OrderAccepted)[0].order_id
    assert trades(evs) == [(b, second, 1000, 10), (b, first, 1000, 2)]


def test_modify_quantity_is_the_new_remaining_after_partial_fill():
    m = Mkt()
    s = m.rest("a", SELL, 1000, 100)
    m.place("b", BUY, 1000, 30)
    (mod,) = m.do(ModifyOrder, "a", s, quantity=50)
    assert mod.priority_kept and mod.quantity == 50
    assert m.book() == [(s, "a", "sell", 1000, 50)]
    assert m.e.orders[s].quantity == 100  # original size is kept for the record


def test_modify_that_crosses_trades_immediately():
    m = Mkt()
    s = m.rest("a", SELL, 1010, 10)
    b = m.rest("b", BUY, 1000, 15)
    evs = m.do(ModifyOrder, "b", b, price=1020)
    assert isinstance(evs[0], OrderModified) and not evs[0].priority_kept
    assert trades(evs) == [(b, s, 1010, 10)]  # at the resting price
    assert m.book() == [(b, "b", "buy", 1020, 5)]


def test_modify_rechecks_risk_with_release_of_the_old_order():
    m = Mkt(collateral=10_000)
    oid = m.rest("a", BUY, 1000, 10)  # uses all the collateral
    (mod,) = m.do(ModifyOrder, "a", oid, price=500, quantity=20)  # same exposure
    assert isinstance(mod, OrderModified)
    assert m.acct("a") == (10_000, 10_000, 0)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=21, reason=Reason.INSUFFICIENT_COLLATERAL)


# =========================================================================== client order ids


def test_client_order_id_resubmission_is_a_duplicate():
    m = Mkt()
    evs = m.place("a", BUY, 1000, 10, coid="c-1")
    acc = of(evs, OrderAccepted)[0]
    book = m.book()
    next_id = m.e.next_order_id
    evs = m.place("a", BUY, 1000, 10, coid="c-1")  # the same order again (a retry)
    assert len(evs) == 1 and isinstance(evs[0], Duplicate)
    d = evs[0]
    assert (d.member, d.client_order_id, d.order_id, d.original_seq, d.reason) == ("a", "c-1", acc.order_id, acc.seq, None)
    assert m.book() == book and m.e.next_order_id == next_id
    # the id is per member
    assert of(m.place("b", BUY, 1000, 10, coid="c-1"), OrderAccepted)


def test_client_order_id_of_filled_or_cancelled_order_still_duplicate():
    m = Mkt()
    oid = m.rest("a", BUY, 1000, 10, coid="x")
    m.do(CancelOrder, "a", oid)
    (d,) = m.place("a", BUY, 1000, 10, coid="x")
    assert isinstance(d, Duplicate) and d.order_id == oid


def test_rejected_client_order_id_is_not_remembered_and_may_be_sent_again():
    m = Mkt()
    before = m.e.snapshot()
    (rej,) = m.place("a", BUY, 10**9, 10, coid="r-1")
    assert rej.reason == Reason.PRICE_OUT_OF_BOUNDS.value and rej.client_order_id == "r-1"
    assert rej.seq == before["seq"] and m.e.snapshot() == before  # nothing to journal, nothing kept
    (acc,) = m.place("a", BUY, 1000, 10, coid="r-1")  # corrected and sent again: a new order
    assert isinstance(acc, OrderAccepted) and acc.seq == before["seq"] + 1
    (d,) = m.place("a", BUY, 1000, 10, coid="r-1")  # the accepted one is remembered
    assert isinstance(d, Duplicate) and d.order_id == acc.order_id


def test_many_rejected_client_order_ids_cost_no_memory():
    m = Mkt()
    before = m.e.snapshot()
    for i in range(2000):
        m.place("a", BUY, 10**9, 10, coid=f"bad-{i}")
    assert m.e.snapshot() == before and not m.e.client_ids


def test_legacy_rule_resubmitted_rejected_client_order_id_gives_original_reason():
    m = Mkt(quiet_rejections=False)  # a market whose stored config predates the quiet rule
    (rej,) = m.place("a", BUY, 10**9, 10, coid="r-1")
    assert rej.reason == Reason.PRICE_OUT_OF_BOUNDS.value and rej.client_order_id == "r-1"
    evs = m.place("a", BUY, 1000, 10, coid="r-1")  # now valid, but the id was used
    assert len(evs) == 1 and isinstance(evs[0], Duplicate)
    assert evs[0].order_id is None and evs[0].reason == Reason.PRICE_OUT_OF_BOUNDS.value
    assert evs[0].original_seq == rej.seq
    assert m.book() == []


# =========================================================================== self-trade prevention


def _stp(mode):
    m = Mkt(self_trade_prevention=mode)
    other = m.rest("b", SELL, 1000, 5)
    own = m.rest("a", SELL, 1000, 10)
    after = m.rest("b", SELL, 1000, 10)
    evs = m.place("a", BUY, 1000, 20)
    inc = of(evs, OrderAccepted)[0].order_id
    return m, evs, other, own, after, inc


def test_stp_cancel_newest():
    m, evs, other, own, after, inc = _stp(SelfTradePrevention.CANCEL_NEWEST)
    assert trades(evs) == [(inc, other, 1000, 5)]
    (c,) = of(evs, OrderCancelled)
    assert (c.order_id, c.remaining, c.reason) == (inc, 15, "self_trade")
    assert m.book() == [(own, "a", "sell", 1000, 10), (after, "b", "sell", 1000, 10)]


def test_stp_cancel_oldest():
    m, evs, other, own, after, inc = _stp(SelfTradePrevention.CANCEL_OLDEST)
    assert trades(evs) == [(inc, other, 1000, 5), (inc, after, 1000, 10)]
    (c,) = of(evs, OrderCancelled)
    assert (c.order_id, c.remaining, c.reason) == (own, 10, "self_trade")
    assert m.book() == [(inc, "a", "buy", 1000, 5)]
    # events in order: trade, cancel own resting, trade
    assert [type(x) for x in evs] == [OrderAccepted, TradeEvent, OrderCancelled, TradeEvent]


def test_stp_cancel_both():
    m, evs, other, own, after, inc = _stp(SelfTradePrevention.CANCEL_BOTH)
    assert trades(evs) == [(inc, other, 1000, 5)]
    cancels = {(c.order_id, c.remaining, c.reason) for c in of(evs, OrderCancelled)}
    assert cancels == {(own, 10, "self_trade"), (inc, 15, "self_trade")}
    assert m.book() == [(after, "b", "sell", 1000, 10)]


def test_stp_allow():
    m, evs, other, own, after, inc = _stp(SelfTradePrevention.ALLOW)
    assert trades(evs) == [(inc, other, 1000, 5), (inc, own, 1000, 10), (inc, after, 1000, 5)]
    assert of(evs, OrderCancelled) == []
    assert m.e.position(m.p, "a") == (20, 10, 10 * 1000)
    assert m.acct("a")[2] == 10 * 1000


@pytest.mark.parametrize(
    ("mode", "qty", "traded"),
    [
        (SelfTradePrevention.CANCEL_NEWEST, 5, 0),  # own order first in the queue: nothing tradeable
        (SelfTradePrevention.CANCEL_BOTH, 5, 0),
        (SelfTradePrevention.CANCEL_OLDEST, 10, 10),  # own order skipped (and cancelled), b's 10 trade
        (SelfTradePrevention.CANCEL_OLDEST, 11, 0),
        (SelfTradePrevention.ALLOW, 20, 20),
        (SelfTradePrevention.ALLOW, 21, 0),
    ],
)
def test_stp_fok_counts_only_tradeable_volume(mode, qty, traded):
    m = Mkt(self_trade_prevention=mode)
    own = m.rest("a", SELL, 1000, 10)
    m.rest("b", SELL, 1000, 10)
    before = m.book()
    evs = m.place("a", BUY, 1000, qty, FOK)
    assert sum(t.quantity for t in of(evs, TradeEvent)) == traded
    if traded == 0:
        assert [(c.remaining, c.reason) for c in of(evs, OrderCancelled)] == [(qty, "not_filled")]
        assert m.book() == before
    elif mode is SelfTradePrevention.CANCEL_OLDEST:
        assert [(c.order_id, c.reason) for c in of(evs, OrderCancelled)] == [(own, "self_trade")]


# =========================================================================== cancel-all, halt, suspension


def test_cancel_all_for_member():
    m = Mkt()
    p2 = m.open[1]
    a1 = m.rest("a", BUY, 900, 10)
    a2 = m.rest("a", SELL, 1100, 10, product=p2)
    b1 = m.rest("b", BUY, 900, 10)
    evs = m.do(CancelAll, "a")
    assert {(c.order_id, c.reason) for c in of(evs, OrderCancelled)} == {(a1, "cancel_all"), (a2, "cancel_all")}
    assert isinstance(evs[-1], CancelAllDone) and evs[-1].cancelled == 2 and evs[-1].product_id is None
    assert set(m.e.orders) == {b1}
    assert m.acct("a")[1] == 0


def test_cancel_all_for_one_product():
    m = Mkt()
    p2 = m.open[1]
    a1 = m.rest("a", BUY, 900, 10)
    a2 = m.rest("a", SELL, 1100, 10, product=p2)
    evs = m.do(CancelAll, "a", p2)
    assert [(c.order_id, c.reason) for c in of(evs, OrderCancelled)] == [(a2, "cancel_all")]
    assert evs[-1].cancelled == 1 and evs[-1].product_id == p2
    assert set(m.e.orders) == {a1}
    evs = m.do(CancelAll, "a", by_operator=True)
    assert [(c.order_id, c.reason) for c in of(evs, OrderCancelled)] == [(a1, "operator")]
    evs = m.do(CancelAll, "a")
    assert evs[-1].cancelled == 0


def test_halt_blocks_place_and_modify_allows_cancel_resume_reenables():
    m = Mkt()
    o1 = m.rest("a", BUY, 900, 10)
    o2 = m.rest("a", BUY, 901, 10)
    (h,) = m.do(Halt, "incident")
    assert isinstance(h, MarketHalted) and h.reason == "incident" and m.e.halted
    assert of(m.place("b", SELL, 900, 10), Rejected)[0].reason == "MARKET_HALTED"
    assert of(m.do(ModifyOrder, "a", o1, price=950), Rejected)[0].reason == "MARKET_HALTED"
    (c,) = m.do(CancelOrder, "a", o1)
    assert isinstance(c, OrderCancelled) and c.reason == "user"
    assert of(m.do(CancelAll, "a"), CancelAllDone)[0].cancelled == 1
    assert o2 not in m.e.orders
    (r,) = m.do(Resume)
    assert isinstance(r, MarketResumed) and not m.e.halted
    assert of(m.place("b", SELL, 900, 10), OrderAccepted)


def test_halt_does_not_stop_the_calendar():
    m = Mkt()
    o = m.rest("a", BUY, 900, 10)
    m.do(Halt, "x")
    evs = m.tick(GATE)
    assert [x.order_id for x in of(evs, OrderExpired)] == [o]


def test_suspending_a_member_cancels_its_orders():
    m = Mkt()
    a1 = m.rest("a", BUY, 900, 10)
    a2 = m.rest("a", SELL, 1100, 10, product=m.open[2])
    b1 = m.rest("b", BUY, 900, 10)
    evs = m.reg("a", suspended=True)
    assert isinstance(evs[0], MemberUpdated) and evs[0].suspended
    assert {(c.order_id, c.reason) for c in of(evs, OrderCancelled)} == {(a1, "suspended"), (a2, "suspended")}
    assert set(m.e.orders) == {b1}
    # un-suspending re-enables trading
    m.reg("a", suspended=False)
    assert of(m.place("a", BUY, 900, 10), OrderAccepted)


# =========================================================================== risk: collateral


def test_collateral_counts_open_buy_exposure():
    m = Mkt(collateral=100_000)
    m.rest("a", BUY, 1000, 60)  # 60_000
    assert m.acct("a") == (100_000, 60_000, 0)
    assert of(m.place("a", BUY, 1000, 41, product=m.open[1]), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    assert of(m.place("a", BUY, 1000, 40, product=m.open[1]), OrderAccepted)
    assert m.acct("a") == (100_000, 100_000, 0)
    # sells at positive prices and buys at negative prices need none
    assert of(m.place("a", SELL, 2000, 40, product=m.open[2]), OrderAccepted)
    assert of(m.place("a", BUY, -10, 40, product=m.open[3]), OrderAccepted)


def test_collateral_counts_net_payable_of_trades():
    m = Mkt(collateral=100_000)
    m.rest("b", SELL, 1000, 60)
    evs = m.place("a", BUY, 1000, 60)
    assert trades(evs)
    assert m.acct("a") == (100_000, 0, 60_000)
    assert m.acct("b") == (100_000, 0, -60_000)
    assert of(m.place("a", BUY, 1000, 41), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    assert of(m.place("a", BUY, 1000, 40), OrderAccepted)
    # a receivable (negative net payable) is not credit: b still has only its collateral
    assert of(m.place("b", BUY, 1000, 101), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    assert of(m.place("b", BUY, 1000, 100), OrderAccepted)


def test_sells_at_negative_prices_need_collateral():
    m = Mkt(collateral=50_000)
    assert of(m.place("a", SELL, -1000, 51), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    assert of(m.place("a", SELL, -1000, 50), OrderAccepted)
    assert m.acct("a") == (50_000, 50_000, 0)
    # a buyer at a negative price is paid: lifting the sell at -1000 credits the buyer
    evs = m.place("b", BUY, -1000, 50)
    (t,) = of(evs, TradeEvent)
    assert t.price == -1000
    assert m.acct("a") == (50_000, 0, 50_000)  # the seller pays 50 Wh x 1000 ticks
    assert m.acct("b") == (50_000, 0, -50_000)


def test_update_collateral_settled_payable_lowers_net_payable():
    m = Mkt(collateral=100_000)
    m.rest("b", SELL, 1000, 100)
    m.place("a", BUY, 1000, 100)
    assert m.acct("a") == (100_000, 0, 100_000)
    assert of(m.place("a", BUY, 1000, 1), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    (ev,) = m.do(UpdateCollateral, "a", 100_000, settled_payable=70_000)
    assert isinstance(ev, CollateralUpdated)
    assert (ev.member, ev.collateral, ev.net_payable) == ("a", 100_000, 30_000)
    assert m.acct("a") == (100_000, 0, 30_000)
    assert of(m.place("a", BUY, 1000, 71), Rejected)[0].reason == "INSUFFICIENT_COLLATERAL"
    assert of(m.place("a", BUY, 1000, 70), OrderAccepted)
    # raising collateral (absolute) also frees room
    (ev,) = m.do(UpdateCollateral, "a", 200_000)
    assert ev.net_payable == 30_000 and m.acct("a")[0] == 200_000
    assert of(m.place("a", BUY, 1000, 100), OrderAccepted)


def test_risk_checks_can_be_disabled():
    m = Mkt(collateral=0, capacity=0, risk_checks=False)
    assert of(m.place("a", BUY, 1000, 10**6), OrderAccepted)
    assert of(m.place("b", SELL, -1000, 10**6), OrderAccepted)


# =========================================================================== risk: export capacity


def test_export_capacity_counts_open_sells_and_net_sold_energy():
    m = Mkt(capacity=1000)  # 1000 Wh per hourly product
    m.rest("a", SELL, 1000, 600)
    assert of(m.place("a", SELL, 1100, 401), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"
    # capacity is per product
    assert of(m.place("a", SELL, 1000, 1000, product=m.open[1]), OrderAccepted)
    # sold energy still counts after the order is gone
    m.place("b", BUY, 1000, 600)
    assert m.e.position(m.p, "a") == (0, 600, -600_000)
    assert of(m.place("a", SELL, 1100, 401), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"
    # buying back reduces the net sold energy
    m.rest("c", SELL, 1000, 100)
    m.place("a", BUY, 1000, 100)
    assert m.e.position(m.p, "a") == (100, 600, -500_000)
    assert of(m.place("a", SELL, 1100, 501), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"
    assert of(m.place("a", SELL, 1100, 500), OrderAccepted)


def test_export_capacity_is_watts_times_product_minutes_over_60():
    cfg = dict(calendar=CalendarConfig(product_minutes=15))
    m = Mkt(capacity=4000, **cfg)  # 4 kW over 15 min = 1000 Wh
    assert m.e.products[m.p].product.minutes == 15
    assert of(m.place("a", SELL, 1000, 1001), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"
    assert of(m.place("a", SELL, 1000, 1000), OrderAccepted)
    m = Mkt(capacity=4001, **cfg)  # 4001 x 15 / 60 = 1000.25 -> 1000 Wh (floor)
    assert of(m.place("a", SELL, 1000, 1001), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"
    m = Mkt(capacity=4000, calendar=CalendarConfig(product_minutes=30))
    assert of(m.place("a", SELL, 1000, 2000), OrderAccepted)
    assert of(m.place("a", SELL, 1000, 1, product=m.open[0]), Rejected)[0].reason == "EXPORT_CAPACITY_EXCEEDED"


def test_modify_sell_up_checks_export_capacity():
    m = Mkt(capacity=1000)
    oid = m.rest("a", SELL, 1000, 800)
    assert isinstance(m.do(ModifyOrder, "a", oid, quantity=1000)[0], OrderModified)
    assert_rejected(m, ModifyOrder, "a", oid, quantity=1001, reason=Reason.EXPORT_CAPACITY_EXCEEDED)


# =========================================================================== gate closure and calendar


def test_gate_closure_expires_orders_and_emits_final_positions():
    m = Mkt()
    p, q = m.open[0], m.open[1]
    s = m.rest("a", SELL, 1000, 100)
    m.place("b", BUY, 1000, 30)
    m.rest("c", SELL, 990, 20, product=q)
    m.place("a", BUY, 995, 20, product=q)
    left_b = m.rest("b", BUY, 900, 5)
    evs = m.tick(GATE)
    assert m.e.products[p].state is ProductState.CLOSED
    exp = [(x.order_id, x.product_id, x.remaining) for x in of(evs, OrderExpired)]
    assert sorted(exp) == sorted([(s, p, 70), (left_b, p, 5)])
    assert all(x.ts == GATE for x in evs if getattr(x, "product_id", None) in (p, q))
    pf = {(x.product_id, x.member): (x.bought, x.sold, x.net, x.payable) for x in of(evs, PositionFinal)}
    assert pf == {
        (p, "a"): (0, 30, -30, -30_000),
        (p, "b"): (30, 0, 30, 30_000),
        (q, "a"): (20, 0, 20, 20 * 990),
        (q, "c"): (0, 20, -20, -20 * 990),
    }
    # per product: expiries, then the state change, then the final positions
    kinds = [type(x) for x in evs if getattr(x, "product_id", None) == p]
    assert kinds == [OrderExpired, OrderExpired, ProductStateChanged, PositionFinal, PositionFinal]
    assert m.e.orders == {}
    assert all(m.acct(x)[1] == 0 for x in "abc")
    # after the gate nothing more can be placed
    assert of(m.place("a", SELL, 1000, 1), Rejected)[0].reason == "PRODUCT_CLOSED"


def test_product_states_over_time():
    e = MarketEngine(MarketConfig())
    t_start = to_us(datetime(2026, 11, 19, 12, tzinfo=UTC))
    evs = e.process(Tick(t_start))
    day = date(2026, 11, 22)
    pid = "20261122T0500Z-60"  # 06:00-07:00 local on 2026-11-22
    assert pid not in e.products  # not listed yet
    listed_at = to_us(datetime(2026, 11, 19, 23, tzinfo=UTC))  # open (2026-11-21 00:00 local) - 1 day
    evs = e.process(Tick(listed_at))
    (lst,) = [x for x in of(evs, ProductListed) if x.product_id == pid]
    assert lst.state == "pre_open" and lst.ts == listed_at
    assert e.products[pid].product.delivery_day == day
    assert e.product_state(pid) is ProductState.PRE_OPEN
    p = e.products[pid].product
    seen = []
    for t in (p.open_us - 1, p.open_us, p.gate_us - 1, p.gate_us, p.end_us - 1, p.end_us):
        evs = e.process(Tick(t))
        seen.append(e.product_state(pid).value)
        for x in of(evs, ProductStateChanged):
            if x.product_id == pid:
                assert x.ts == t  # stamped with the scheduled time
        e.check_invariants()
    assert seen == ["pre_open", "open", "open", "closed", "closed", "delivered"]


def test_transitions_are_stamped_with_their_scheduled_time_and_in_order():
    m = Mkt()
    p = m.e.products[m.p].product
    evs = m.tick(p.end_us + 1)
    mine = [x for x in of(evs, ProductStateChanged) if x.product_id == m.p]
    assert [(x.state, x.ts) for x in mine] == [("closed", p.gate_us), ("delivered", p.end_us)]
    ts = [x.ts for x in evs]
    assert ts == sorted(ts)
    seqs = [x.seq for x in evs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_time_never_runs_backwards():
    m = Mkt()
    now = m.e.now
    evs = m.e.process(PlaceOrder(now - 10**9, "a", m.p, BUY, 1000, 10))
    assert evs[0].ts == now
    assert m.e.orders[evs[0].order_id].ts == now


def test_next_transition():
    m = Mkt()
    # the product delivering now (08:00-09:00 UTC) ends first, then others, then the gate at 11:00 UTC
    assert m.e.next_transition_us() == to_us(datetime(2026, 11, 21, 9, tzinfo=UTC))
    m.tick(to_us(datetime(2026, 11, 21, 10, 30, tzinfo=UTC)))
    assert m.e.next_transition_us() == GATE


def test_rolling_gate_closes_products_one_by_one():
    m = Mkt(calendar=CalendarConfig(gate=GateMode.ROLLING, gate_rolling_minutes=60))
    open_now = [pid for pid, pb in m.e.products.items() if pb.state is ProductState.OPEN]
    first = min(open_now, key=lambda pid: m.e.products[pid].product.start_us)
    fp = m.e.products[first].product
    assert fp.gate_us == fp.start_us - 60 * US_PER_MIN
    oid = m.rest("a", BUY, 1000, 10, product=first)
    evs = m.tick(fp.gate_us)
    assert [x.order_id for x in of(evs, OrderExpired)] == [oid]
    assert m.e.products[first].state is ProductState.CLOSED
    assert sum(pb.state is ProductState.OPEN for pb in m.e.products.values()) == len(open_now) - 1


# =========================================================================== call auction


def test_call_auction_rests_crossing_orders_and_clears_at_gate():
    m = Mkt(mechanism=Mechanism.CALL)
    b1 = m.rest("a", BUY, 1100, 10)
    s1 = m.rest("b", SELL, 1000, 6)
    s2 = m.rest("c", SELL, 1050, 6)
    assert len(m.book()) == 3  # crossed, but nothing trades before the gate
    evs = m.tick(GATE)
    (ac,) = [x for x in of(evs, AuctionCleared) if x.product_id == m.p]
    # 1000: d10 s6 -> 6; 1050: d10 s12 -> 10 imb 2; 1100: d10 s12 -> 10 imb 2 -> lower median 1050
    assert (ac.price, ac.volume) == (1050, 10)
    assert trades(evs) == [(b1, s1, 1050, 6), (b1, s2, 1050, 4)]
    assert all(t.aggressor == "auction" for t in of(evs, TradeEvent))
    assert [(x.order_id, x.remaining) for x in of(evs, OrderExpired)] == [(s2, 2)]
    pf = {x.member: (x.bought, x.sold, x.payable) for x in of(evs, PositionFinal) if x.product_id == m.p}
    assert pf == {"a": (10, 0, 10_500), "b": (0, 6, -6300), "c": (0, 4, -4200)}
    # the auction precedes expiry and the state change
    kinds = [type(x) for x in evs if getattr(x, "product_id", None) == m.p]
    assert kinds[0] is AuctionCleared and kinds.index(ProductStateChanged) > kinds.index(OrderExpired)


def test_call_auction_without_crossing_clears_nothing():
    m = Mkt(mechanism=Mechanism.CALL)
    m.rest("a", BUY, 900, 10)
    m.rest("b", SELL, 1000, 6)
    evs = m.tick(GATE)
    (ac,) = [x for x in of(evs, AuctionCleared) if x.product_id == m.p]
    assert ac.price is None and ac.volume == 0
    assert of(evs, TradeEvent) == [] and len(of(evs, OrderExpired)) == 2


def test_call_auction_modify_keeps_or_loses_priority():
    m = Mkt(mechanism=Mechanism.CALL)
    b1 = m.rest("a", BUY, 1000, 10)
    b2 = m.rest("c", BUY, 1000, 10)
    m.do(ModifyOrder, "a", b1, quantity=20)  # quantity up: behind b2
    m.rest("b", SELL, 1000, 15)
    evs = m.tick(GATE)
    filled = {}
    for t in of(evs, TradeEvent):
        filled[t.buy_order_id] = filled.get(t.buy_order_id, 0) + t.quantity
    assert filled == {b2: 10, b1: 5}
