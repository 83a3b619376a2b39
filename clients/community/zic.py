"""Allocative efficiency of the real engine with zero-intelligence traders.

Gode & Sunder (1993) showed that a continuous double auction (CDA) extracts
almost all the surplus of a market even when traders are "zero intelligence":
ZI-C traders (constrained: never trade at a loss) reached about 97-99 %
allocative efficiency, ZI-U traders (unconstrained) far less. We run their
experiment on :class:`exchange.core.engine.MarketEngine`, in-process and
deterministic (time is an input), as a check that our matching rules (price-
time priority, resting-order price) realise what a CDA should.

Session design (see docs/community.md for the reasoning)
--------------------------------------------------------
* A market is a set of buyers with private unit *values* and sellers with
  private unit *costs* (ticks), a few units each, traded in order (a buyer's
  most valuable unit first, a seller's cheapest first). One unit is
  ``unit_wh`` Wh (1 kWh by default); prices lie in ``[price_min, price_max]``
  (G&S: 1..200; here 1..200 EUR/MWh = 100..20 000 ticks).
* A session has several *trading periods* (6 by default); endowments reset
  each period. Each period trades its own product (consecutive hourly
  products of the next day, all open), so periods never interfere.
* Within a period, at each step one trader is drawn uniformly at random among
  those with units left, and submits a one-unit GTC limit order at a price
  drawn uniformly (integer ticks) from ``[cost, price_max]`` for a seller or
  ``[price_min, value]`` for a buyer (ZI-C), or from ``[price_min,
  price_max]`` for either (ZI-U). A trader has at most one order in the book:
  a new one replaces (cancels) its previous one.
* After every trade, all remaining orders are cancelled (the book is
  cleared), as in G&S's market, where bids and asks not accepted at a
  transaction were nullified. Without it, stale orders of traders whose value
  has since dropped would not exist (one unit at a time), but stale prices far
  from the current state of the market would keep priority.
* A period ends when no trade is possible any more (ZI-C: no buyer's current
  value reaches any seller's current cost; ZI-U: one side has no units left)
  or after ``max_steps`` submissions.

Efficiency = realised surplus / maximum surplus, summed over the periods
(exact ``Fraction``), where the realised surplus of a trade is the buyer's
value of the unit minus the seller's cost (the price is a transfer) and the
maximum is the competitive-equilibrium surplus of the schedules.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from exchange.core.calendar import ProductState
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.ids import MemberId, OrderId
from exchange.core.model import (
    CancelOrder,
    OrderAccepted,
    PlaceOrder,
    RegisterMember,
    Side,
    Tick,
    TimeInForce,
    TradeEvent,
)
from exchange.core.units import to_us

T0 = to_us(datetime(2026, 11, 21, 8, tzinfo=UTC))  # next day's 24 products are open until 11:00 UTC
EUR = 100  # ticks per EUR/MWh


@dataclass(frozen=True, slots=True)
class Schedules:
    """Private values (buyers) and costs (sellers) in ticks, per trader, in trading order."""

    name: str
    buyers: tuple[tuple[int, ...], ...]
    sellers: tuple[tuple[int, ...], ...]
    price_min: int = 1 * EUR
    price_max: int = 200 * EUR

    def __post_init__(self) -> None:
        for vals in self.buyers:
            if list(vals) != sorted(vals, reverse=True):
                raise ValueError("a buyer's values must be non-increasing (most valuable unit first)")
        for costs in self.sellers:
            if list(costs) != sorted(costs):
                raise ValueError("a seller's costs must be non-decreasing (cheapest unit first)")
        every = [v for b in self.buyers for v in b] + [c for s in self.sellers for c in s]
        if not every or not all(self.price_min <= x <= self.price_max for x in every):
            raise ValueError("values and costs must lie within [price_min, price_max]")

    def equilibrium(self) -> tuple[int, int, int, int]:
        """(quantity, max surplus, lowest and highest competitive price) in units and ticks."""
        values = sorted((v for b in self.buyers for v in b), reverse=True)
        costs = sorted(c for s in self.sellers for c in s)
        q = 0
        while q < min(len(values), len(costs)) and values[q] >= costs[q]:
            q += 1
        surplus = sum(values[i] - costs[i] for i in range(q))
        # Prices clearing q units: at least the q-th cost and the (q+1)-th value, at most the q-th value
        # and the (q+1)-th cost.
        lo = costs[q - 1] if q else self.price_min
        if q < len(values):
            lo = max(lo, values[q])
        hi = values[q - 1] if q else self.price_max
        if q < len(costs):
            hi = min(hi, costs[q])
        return q, surplus, lo, hi


def _spread(hi: int, lo: int, n_traders: int, units: int) -> tuple[tuple[int, ...], ...]:
    """``n_traders * units`` steps from ``hi`` to ``lo`` (EUR/MWh), dealt round robin."""
    n = n_traders * units
    steps = [(hi * (n - 1 - i) + lo * i) // (n - 1) * EUR for i in range(n)]
    return tuple(tuple(steps[t + k * n_traders] for k in range(units)) for t in range(n_traders))


def _rev(sched: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(sorted(u)) for u in sched)


#: Markets in the spirit of G&S's five (their exact schedules are only printed as
#: figures): 6 buyers and 6 sellers, 3 units each unless noted, values/costs in 1..200.
MARKETS: dict[str, Schedules] = {
    # linear, symmetric around 105; 9-10 units trade
    "symmetric": Schedules("symmetric", _spread(190, 20, 6, 3), _rev(_spread(190, 20, 6, 3))),
    # flat supply (every cost 80..90), steep demand
    "flat_supply": Schedules("flat_supply", _spread(200, 40, 6, 3),
                             _rev(tuple(tuple(80 * EUR + (t * 3 + k) * 50 for k in range(3)) for t in range(6)))),
    # demand steeper than supply, few extra-marginal units
    "steep_demand": Schedules("steep_demand", _spread(200, 60, 6, 2), _rev(_spread(140, 30, 6, 4))),
    # many extra-marginal traders on both sides (the hard case for ZI-C)
    "extramarginal": Schedules("extramarginal", _spread(150, 10, 8, 3), _rev(_spread(180, 50, 8, 3))),
}


def random_market(seed: int, n_buyers: int = 6, n_sellers: int = 6, units: int = 3,
                  price_min: int = 1 * EUR, price_max: int = 200 * EUR) -> Schedules:
    """Values and costs drawn uniformly from ``[price_min, price_max]`` (whole EUR/MWh)."""
    rng = random.Random(f"zi-market|{seed}")
    lo, hi = price_min // EUR, price_max // EUR
    buyers = tuple(tuple(sorted((rng.randint(lo, hi) * EUR for _ in range(units)), reverse=True))
                   for _ in range(n_buyers))
    sellers = tuple(tuple(sorted(rng.randint(lo, hi) * EUR for _ in range(units))) for _ in range(n_sellers))
    return Schedules(f"random-{seed}", buyers, sellers, price_min, price_max)


# --------------------------------------------------------------------------- a session on the engine


@dataclass(slots=True)
class SessionResult:
    market: str
    mode: str
    seed: int
    periods: int
    realised: int  # surplus, ticks x units
    maximum: int
    trades: int
    eq_trades: int  # competitive quantity x periods
    loss_trades: int  # trades where the buyer's value < the seller's cost
    prices: list[int] = field(default_factory=list)
    eq_mid: Fraction = Fraction(0)
    commands: int = 0

    @property
    def efficiency(self) -> Fraction:
        return Fraction(self.realised, self.maximum) if self.maximum else Fraction(1)

    @property
    def price_rmsd(self) -> Decimal:
        """Root mean square deviation of trade prices from the equilibrium mid price, ticks (display)."""
        if not self.prices:
            return Decimal(0)
        ms = sum(((p - self.eq_mid) ** 2 for p in self.prices), Fraction(0)) / len(self.prices)
        return (Decimal(ms.numerator) / Decimal(ms.denominator)).sqrt()


class _Session:
    """One engine, members registered; runs trading periods on successive products."""

    def __init__(self, sched: Schedules, unit_wh: int) -> None:
        self.e = MarketEngine(MarketConfig())
        self.t = T0
        self.commands = 0
        self.e.process(Tick(T0))
        self.products = sorted(pid for pid, pb in self.e.products.items() if pb.state is ProductState.OPEN)
        self.buyers = [MemberId(f"b{i}") for i in range(len(sched.buyers))]
        self.sellers = [MemberId(f"s{i}") for i in range(len(sched.sellers))]
        big = 10**18
        for b in self.buyers:
            self.do(RegisterMember(0, b, collateral=big, export_capacity_w=0))
        for s in self.sellers:
            # export capacity: what the seller can deliver in one hourly product (W x 1 h = Wh)
            self.do(RegisterMember(0, s, collateral=big, export_capacity_w=max(map(len, sched.sellers)) * unit_wh))
        self.unit_wh = unit_wh

    def do(self, cmd) -> list:
        self.t += 1000  # 1 ms per command
        cmd.ts = self.t
        self.commands += 1
        return self.e.process(cmd)


def run_session(sched: Schedules, seed: int, periods: int = 6, mode: str = "zi-c", max_steps: int = 3000,
                unit_wh: int = 1000, clear_after_trade: bool = True) -> SessionResult:
    """Run ``periods`` trading periods of ``sched`` with ZI traders (``mode`` ``zi-c`` or ``zi-u``).

    ``clear_after_trade=False`` keeps the other orders in the book after a
    trade (a plain persistent CDA book), for comparison.
    """
    if mode not in ("zi-c", "zi-u"):
        raise ValueError("mode is 'zi-c' or 'zi-u'")
    s = _Session(sched, unit_wh)
    if periods > len(s.products):
        raise ValueError(f"at most {len(s.products)} periods (one open product each)")
    rng = random.Random(f"zi-session|{seed}|{mode}")
    q, max_surplus, lo, hi = sched.equilibrium()
    res = SessionResult(sched.name, mode, seed, periods, 0, max_surplus * periods, 0, q * periods, 0,
                        eq_mid=Fraction(lo + hi, 2))
    pmin, pmax = sched.price_min, sched.price_max
    nb = len(sched.buyers)
    index = {m: i for i, m in enumerate(s.buyers)} | {m: nb + i for i, m in enumerate(s.sellers)}
    for period in range(periods):
        product = s.products[period]
        units = [list(v) for v in sched.buyers] + [list(c) for c in sched.sellers]
        nxt = [0] * len(units)  # next unit per trader
        live: dict[int, OrderId] = {}  # trader -> resting order id
        members = s.buyers + s.sellers
        for _ in range(max_steps):
            active = [i for i in range(len(units)) if nxt[i] < len(units[i])]
            act_b = [i for i in active if i < nb]
            act_s = [i for i in active if i >= nb]
            if not act_b or not act_s:
                break
            if mode == "zi-c" and max(units[i][nxt[i]] for i in act_b) < min(units[i][nxt[i]] for i in act_s):
                break  # no trade can happen without a loss
            i = rng.choice(active)
            if i in live:
                s.do(CancelOrder(0, members[i], live.pop(i)))
            limit = units[i][nxt[i]]
            if i < nb:
                side, price = Side.BUY, rng.randint(pmin, limit if mode == "zi-c" else pmax)
            else:
                side, price = Side.SELL, rng.randint(limit if mode == "zi-c" else pmin, pmax)
            evs = s.do(PlaceOrder(0, members[i], product, side, price, unit_wh, TimeInForce.GTC))
            traded = [ev for ev in evs if isinstance(ev, TradeEvent)]
            if not traded:
                acc = [ev for ev in evs if isinstance(ev, OrderAccepted)]
                if not acc:
                    raise RuntimeError(f"order not accepted: {evs}")
                live[i] = acc[0].order_id
                continue
            for tr in traded:  # a unit order trades at most once
                b, sl = index[tr.buyer], index[tr.seller]
                assert tr.quantity == unit_wh
                value, cost = units[b][nxt[b]], units[sl][nxt[sl]]
                res.realised += value - cost
                res.loss_trades += value < cost
                res.trades += 1
                res.prices.append(tr.price)
                nxt[b] += 1
                nxt[sl] += 1
                live.pop(b, None)
                live.pop(sl, None)
            if clear_after_trade:
                for j, oid in sorted(live.items()):  # clear the book after a trade
                    s.do(CancelOrder(0, members[j], oid))
                live.clear()
        for j, oid in sorted(live.items()):
            s.do(CancelOrder(0, members[j], oid))
    res.commands = s.commands
    s.e.check_invariants()
    return res


# --------------------------------------------------------------------------- bench


def default_markets() -> list[Schedules]:
    return list(MARKETS.values())


def run_bench(sessions: int = 20, seed: int = 1, periods: int = 6, mode: str = "zi-c",
              markets: list[Schedules] | None = None, max_steps: int = 3000) -> dict:
    """``sessions`` sessions cycling over ``markets``; efficiency median/min/max and more, JSON-ready."""
    markets = markets or default_markets()
    results = []
    t0 = time.perf_counter()
    for k in range(sessions):
        results.append(run_session(markets[k % len(markets)], seed * 100_003 + k, periods, mode, max_steps))
    elapsed = time.perf_counter() - t0
    effs = [r.efficiency for r in results]
    per_market: dict[str, list[Fraction]] = {}
    for r in results:
        per_market.setdefault(r.market, []).append(r.efficiency)

    def pct(x: Fraction) -> float:  # display only
        return round(float(x) * 100, 2)

    return {
        "mode": mode,
        "sessions": sessions,
        "periods": periods,
        "seed": seed,
        "efficiency_median_pct": pct(statistics.median(effs)),
        "efficiency_min_pct": pct(min(effs)),
        "efficiency_max_pct": pct(max(effs)),
        "efficiency_by_market_median_pct": {m: pct(statistics.median(v)) for m, v in per_market.items()},
        "trades": sum(r.trades for r in results),
        "equilibrium_trades": sum(r.eq_trades for r in results),
        "loss_trades": sum(r.loss_trades for r in results),
        "price_rmsd_eur_mwh": float(round(sum((r.price_rmsd for r in results), Decimal(0)) / len(results) / EUR, 2)),
        "engine_commands": sum(r.commands for r in results),
        "seconds": round(elapsed, 3),
    }


__all__ = ["MARKETS", "Schedules", "SessionResult", "default_markets", "random_market", "run_bench", "run_session"]
