"""Bot strategies as pure planners: no I/O, no clock, no randomness but their own seeded one.

A bot (``clients/bots/base.py``, run by ``clients/bots/runner.py``) owns the
connection; a planner only decides what one member wants in the book. All
quantities are integer Wh, all prices integer ticks (0.01 EUR/MWh), times
integer microseconds UTC.

Interface (common to every planner)
-----------------------------------
::

    Intent(side: Side, quantity_wh: int, price_ticks: int)        # frozen

    MarketView(reference_price_ticks: int | None = None,          # frozen; what the runner knows
               best_bid: int | None = None, best_ask: int | None = None,
               last_price: int | None = None)

    planner.products() -> list[str]
        the product ids it wants to trade (in delivery order)
    planner.plan(now_us: int, product_id: str, minutes_to_gate: int,
                 state: MarketView) -> list[Intent]
        the orders the member wants *resting* in ``product_id`` now
    planner.on_fill(side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> None
        report an execution of this member (from its execution reports)

Runner contract:

1. Call ``plan`` for a product whenever it wants to (re)quote it, e.g. every
   few simulated minutes while the product is open; ``minutes_to_gate`` is
   ``(gate_us - now_us) // 60_000_000`` (>= 0).
2. The intents are the *complete target* for that product: cancel the
   member's open orders there that are not in the list (same side, price and
   quantity may be kept as they are), and wait for the cancel acks before
   placing the new ones (GTC). Fills that arrive before a cancel's ack must be
   reported with ``on_fill`` first; the next ``plan`` accounts for them.
3. Report every fill with ``on_fill``. Planners compute quantities from fills
   only, so a planner never wants more than its limit (forecast surplus,
   battery state of charge, units) provided the runner never has two
   generations of orders for a product in the book at once.
4. An empty list means: nothing should rest in that product.

Planners
--------
* :class:`ProsumerPlanner`: a member's 24-hour forecast (hourly consumption
  and PV Wh) to hourly buys (deficit hours) and sells (surplus hours), priced
  at a percentage of the reference price that moves linearly from
  ``*_start_bp`` to ``*_end_bp`` (basis points of the reference) over the last
  ``ramp_minutes`` before the gate. It sells at most its forecast surplus
  (``sold <= generation - consumption`` per hour) and buys at most its
  deficit; the runner reports delivery from the profile.
* :class:`BatteryPlanner`: from hourly reference prices, a greedy arbitrage
  schedule (charge in cheap hours, discharge in expensive ones: dynamic
  programming on a SoC grid, feasible within SoC limits and the power limit
  hour by hour, round-trip efficiency applied on charging as an exact
  ``Fraction``, ending at least at the initial SoC); the
  intents are capped by what the *filled* trades allow, so the realised
  schedule is always feasible.
* :class:`ZicPlanner`: Gode & Sunder's zero-intelligence constrained trader
  for live bots: one unit at a time, random limit price within its private
  value (buyer) or cost (seller), never at a loss.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import ceil
from typing import Protocol

from exchange.core.model import Side

BP = 10_000  # basis points: 10 000 = 100 %
DEFAULT_PRICE_MIN = -50_000  # ticks, the engine's default bounds
DEFAULT_PRICE_MAX = 400_000


@dataclass(frozen=True, slots=True)
class Intent:
    side: Side
    quantity_wh: int
    price_ticks: int

    def __post_init__(self) -> None:
        if type(self.quantity_wh) is not int or type(self.price_ticks) is not int or self.quantity_wh <= 0:
            raise ValueError("an intent has a positive integer quantity and an integer price")


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the runner knows of a product's market; every field optional."""

    reference_price_ticks: int | None = None
    best_bid: int | None = None
    best_ask: int | None = None
    last_price: int | None = None


class Planner(Protocol):
    def products(self) -> list[str]: ...

    def plan(self, now_us: int, product_id: str, minutes_to_gate: int, state: MarketView) -> list[Intent]: ...

    def on_fill(self, side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> None: ...


def _side(side: Side | str) -> Side:
    return side if isinstance(side, Side) else Side(side)


def apply_bp(reference: int, bp: int, round_up: bool) -> int:
    """``reference`` moved by ``bp - 10000`` basis points of ``|reference|`` (so above
    10000 means higher, also for negative references); integer, rounded up or down."""
    num = reference * BP + abs(reference) * (bp - BP)
    return -((-num) // BP) if round_up else num // BP


def ramp_bp(start_bp: int, end_bp: int, minutes_to_gate: int, ramp_minutes: int) -> int:
    """Linear from ``start_bp`` (``ramp_minutes`` or more before the gate) to ``end_bp`` (at the gate)."""
    if ramp_minutes <= 0 or minutes_to_gate >= ramp_minutes:
        return start_bp if ramp_minutes > 0 else end_bp
    m = max(minutes_to_gate, 0)
    return end_bp + (start_bp - end_bp) * m // ramp_minutes


class _Fills:
    """Bought / sold Wh and money per product."""

    def __init__(self) -> None:
        self.bought: dict[str, int] = {}
        self.sold: dict[str, int] = {}
        self.paid: dict[str, int] = {}  # money units, buys - sells

    def add(self, side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> Side:
        if type(qty_wh) is not int or qty_wh <= 0 or type(price_ticks) is not int:
            raise ValueError("a fill has a positive integer quantity and an integer price")
        s = _side(side)
        book = self.bought if s is Side.BUY else self.sold
        book[product_id] = book.get(product_id, 0) + qty_wh
        sign = 1 if s is Side.BUY else -1
        self.paid[product_id] = self.paid.get(product_id, 0) + sign * qty_wh * price_ticks
        return s


# --------------------------------------------------------------------------- prosumer


class ProsumerPlanner:
    """Hourly buys/sells from a forecast, priced around a reference, never overselling.

    ``forecast``: product id -> (consumption Wh, generation Wh), e.g. one
    member's entry of ``clients.community.profiles.hourly_table``.
    ``reference``: the reference price (ticks) for every product, or per
    product; ``state.reference_price_ticks`` overrides it when given, and
    ``state.last_price`` is used when neither is known.
    Prices: sells start at ``sell_start_bp`` of the reference and end at
    ``sell_end_bp`` at the gate (buys likewise), clamped to
    ``[sell_floor_ticks, ...]`` / ``[..., buy_cap_ticks]`` when given (e.g.
    the feed-in and retail tariffs: selling below feed-in or buying above
    retail is worse than the grid) and to the market's price bounds.
    """

    def __init__(self, forecast: Mapping[str, tuple[int, int]], reference: int | Mapping[str, int] = 15_000, *,
                 sell_start_bp: int = 11_500, sell_end_bp: int = 10_000, buy_start_bp: int = 8_500,
                 buy_end_bp: int = 10_000, ramp_minutes: int = 180, min_order_wh: int = 100,
                 sell_floor_ticks: int | None = None, buy_cap_ticks: int | None = None,
                 price_min: int = DEFAULT_PRICE_MIN, price_max: int = DEFAULT_PRICE_MAX) -> None:
        for pid, (c, g) in forecast.items():
            if type(c) is not int or type(g) is not int or c < 0 or g < 0:
                raise ValueError(f"forecast for {pid}: consumption and generation are non-negative int Wh")
        if min_order_wh < 1:
            raise ValueError("min_order_wh must be >= 1")
        self.forecast = dict(forecast)
        self.reference = reference
        self.sell_start_bp, self.sell_end_bp = sell_start_bp, sell_end_bp
        self.buy_start_bp, self.buy_end_bp = buy_start_bp, buy_end_bp
        self.ramp_minutes = ramp_minutes
        self.min_order_wh = min_order_wh
        self.sell_floor_ticks, self.buy_cap_ticks = sell_floor_ticks, buy_cap_ticks
        self.price_min, self.price_max = price_min, price_max
        self.fills = _Fills()

    def products(self) -> list[str]:
        return sorted(self.forecast)

    def surplus(self, product_id: str) -> int:
        c, g = self.forecast.get(product_id, (0, 0))
        return max(g - c, 0)

    def deficit(self, product_id: str) -> int:
        c, g = self.forecast.get(product_id, (0, 0))
        return max(c - g, 0)

    def _reference(self, product_id: str, state: MarketView) -> int | None:
        if state.reference_price_ticks is not None:
            return state.reference_price_ticks
        if isinstance(self.reference, int):
            return self.reference
        ref = self.reference.get(product_id)
        return ref if ref is not None else state.last_price

    def plan(self, now_us: int, product_id: str, minutes_to_gate: int, state: MarketView) -> list[Intent]:
        if product_id not in self.forecast:
            return []
        ref = self._reference(product_id, state)
        if ref is None:
            return []
        sold = self.fills.sold.get(product_id, 0)
        bought = self.fills.bought.get(product_id, 0)
        sell = self.surplus(product_id) - sold
        buy = self.deficit(product_id) - bought
        if sell >= self.min_order_wh:
            price = apply_bp(ref, ramp_bp(self.sell_start_bp, self.sell_end_bp, minutes_to_gate, self.ramp_minutes),
                             round_up=True)
            if self.sell_floor_ticks is not None:
                price = max(price, self.sell_floor_ticks)
            return [Intent(Side.SELL, sell, min(max(price, self.price_min), self.price_max))]
        if buy >= self.min_order_wh:
            price = apply_bp(ref, ramp_bp(self.buy_start_bp, self.buy_end_bp, minutes_to_gate, self.ramp_minutes),
                             round_up=False)
            if self.buy_cap_ticks is not None:
                price = min(price, self.buy_cap_ticks)
            return [Intent(Side.BUY, buy, min(max(price, self.price_min), self.price_max))]
        return []

    def on_fill(self, side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> None:
        self.fills.add(side, product_id, qty_wh, price_ticks)

    def delivery(self, product_id: str) -> tuple[int, int]:
        """(consumption, generation) Wh the runner reports as delivered for ``product_id`` (the forecast)."""
        return self.forecast.get(product_id, (0, 0))


# --------------------------------------------------------------------------- battery


@dataclass(frozen=True, slots=True)
class BatterySpec:
    """Battery limits (integers, Wh and W; efficiency exact). ``end_soc_wh``:
    the schedule returns to it by the end of the day (default: the initial SoC)."""

    capacity_wh: int
    power_w: int
    efficiency: Fraction = Fraction(9, 10)
    min_soc_wh: int = 0
    max_soc_wh: int | None = None
    initial_soc_wh: int = 0

    def __post_init__(self) -> None:
        hi = self.capacity_wh if self.max_soc_wh is None else self.max_soc_wh
        if not (0 <= self.min_soc_wh <= self.initial_soc_wh <= hi <= self.capacity_wh):
            raise ValueError("battery: need 0 <= min_soc <= initial_soc <= max_soc <= capacity")
        if self.power_w <= 0 or not isinstance(self.efficiency, Fraction) or not (0 < self.efficiency <= 1):
            raise ValueError("battery: power > 0 and efficiency a Fraction in (0, 1]")

    @property
    def hi(self) -> int:
        return self.capacity_wh if self.max_soc_wh is None else self.max_soc_wh

    @classmethod
    def from_battery(cls, b) -> BatterySpec:
        """From a ``clients.community.profiles.Battery``."""
        return cls(b.capacity_wh, b.power_w, b.efficiency, b.min_soc_wh, None, b.initial_soc_wh)

    def stored(self, grid_wh: int) -> int:
        """Energy stored by charging ``grid_wh`` from the grid (efficiency applied on charge, floored)."""
        return grid_wh * self.efficiency.numerator // self.efficiency.denominator


def soc_trajectory(spec: BatterySpec, charge_wh: Sequence[int], discharge_wh: Sequence[int]) -> list[int]:
    """SoC at the start of each hour and after the last (len + 1 values) for grid
    charge Wh and discharged Wh per hour."""
    soc = [spec.initial_soc_wh]
    for c, d in zip(charge_wh, discharge_wh):
        soc.append(soc[-1] + spec.stored(c) - d)
    return soc


def feasible(spec: BatterySpec, charge_wh: Sequence[int], discharge_wh: Sequence[int], hour_wh: int) -> bool:
    """Every hour within the power limit (grid side for charging) and every SoC within [min, max]."""
    if any(c < 0 or d < 0 or c > hour_wh or d > hour_wh for c, d in zip(charge_wh, discharge_wh)):
        return False
    return all(spec.min_soc_wh <= s <= spec.hi for s in soc_trajectory(spec, charge_wh, discharge_wh))


class BatteryPlanner:
    """Arbitrage over one delivery day's products.

    ``prices``: product id -> reference price (ticks), one entry per product of
    the day, in delivery order when sorted (product ids sort chronologically).
    ``product_minutes``: the products' duration; the power limit gives at
    most ``power_w * minutes / 60`` Wh per product and direction.
    The schedule (:meth:`_schedule`) is computed once from the prices; the
    intents are priced at ``buy_bp`` / ``sell_bp`` of the hour's reference
    (``state.reference_price_ticks`` when the runner gives one).
    """

    LEVELS = 40

    def __init__(self, spec: BatterySpec, prices: Mapping[str, int], *, product_minutes: int = 60,
                 buy_bp: int = BP, sell_bp: int = BP, min_order_wh: int = 100,
                 price_min: int = DEFAULT_PRICE_MIN, price_max: int = DEFAULT_PRICE_MAX) -> None:
        self.spec = spec
        self.ids = sorted(prices)
        self.prices = [prices[p] for p in self.ids]
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.hour_wh = spec.power_w * product_minutes // 60
        self.buy_bp, self.sell_bp = buy_bp, sell_bp
        self.min_order_wh = min_order_wh
        self.price_min, self.price_max = price_min, price_max
        self.fills = _Fills()
        self.charge_plan, self.discharge_plan = self._schedule()

    # -- schedule
    def _schedule(self) -> tuple[list[int], list[int]]:
        """Optimal (on a SoC grid) arbitrage: (grid charge Wh, discharge Wh) per hour.

        Dynamic programming over the hours with the SoC on a grid of at most
        ``LEVELS + 1`` levels between the minimum and the maximum SoC, anchored
        at the initial SoC (step = the larger of 1 Wh and the usable range /
        LEVELS, rounded up), maximising sells minus buys at
        the reference prices (exact integers), ending at or above the initial
        SoC. Charging j steps stores ``j * step`` and buys ``ceil(j * step / eff)``
        from the grid; both directions within the power limit; never both in
        one hour. Ties prefer doing nothing.
        """
        spec, eff, n = self.spec, self.spec.efficiency, len(self.prices)
        rng_wh = spec.hi - spec.min_soc_wh
        step = max(1, -(-rng_wh // self.LEVELS))
        k_lo = -((spec.initial_soc_wh - spec.min_soc_wh) // step)
        k_hi = (spec.hi - spec.initial_soc_wh) // step
        levels = range(k_lo, k_hi + 1)
        grid_for = [ceil(Fraction(j * step) / eff) for j in range(k_hi - k_lo + 1)]
        max_up = max(j for j in range(len(grid_for)) if grid_for[j] <= self.hour_wh)
        max_down = min(self.hour_wh // step, k_hi - k_lo)
        neg = None
        # best[k] = best money from hour t to the end starting at level k; choice[t][k] = steps (+ charge, - discharge)
        best = {k: (0 if k >= 0 else neg) for k in levels}
        choices: list[dict[int, int]] = []
        for t in range(n - 1, -1, -1):
            price = self.prices[t]
            cur: dict[int, int | None] = {}
            ch: dict[int, int] = {}
            for k in levels:
                b, bj = best[k], 0
                for j in range(1, max_up + 1):
                    if k + j > k_hi:
                        break
                    f = best[k + j]
                    if f is not None:
                        v = f - grid_for[j] * price
                        if b is None or v > b:
                            b, bj = v, j
                for j in range(1, max_down + 1):
                    if k - j < k_lo:
                        break
                    f = best[k - j]
                    if f is not None:
                        v = f + j * step * price
                        if b is None or v > b:
                            b, bj = v, -j
                cur[k], ch[k] = b, bj
            best = cur
            choices.append(ch)
        choices.reverse()
        charge, out = [0] * n, [0] * n
        k = 0
        for t in range(n):
            j = choices[t][k]
            if j > 0:
                charge[t] = grid_for[j]
            elif j < 0:
                out[t] = -j * step
            k += j
        return charge, out

    # -- what the fills allow
    def filled(self) -> tuple[list[int], list[int]]:
        return ([self.fills.bought.get(p, 0) for p in self.ids], [self.fills.sold.get(p, 0) for p in self.ids])

    def soc(self) -> list[int]:
        """SoC trajectory implied by the fills so far."""
        return soc_trajectory(self.spec, *self.filled())

    def products(self) -> list[str]:
        return [p for i, p in enumerate(self.ids) if self.charge_plan[i] or self.discharge_plan[i]]

    def plan(self, now_us: int, product_id: str, minutes_to_gate: int, state: MarketView) -> list[Intent]:
        h = self.index.get(product_id)
        if h is None:
            return []
        spec = self.spec
        bought, sold = self.filled()
        soc = soc_trajectory(spec, bought, sold)
        ref = state.reference_price_ticks if state.reference_price_ticks is not None else self.prices[h]
        if self.charge_plan[h] and not sold[h]:
            b = bought[h]
            headroom = min(spec.hi - s for s in soc[h + 1:])
            # largest extra q with stored(b + q) - stored(b) <= headroom
            eff = spec.efficiency
            q_soc = ceil(Fraction(spec.stored(b) + headroom + 1) / eff) - 1 - b
            q = min(self.charge_plan[h] - b, self.hour_wh - b, q_soc)
            if q >= self.min_order_wh:
                price = min(max(apply_bp(ref, self.buy_bp, round_up=False), self.price_min), self.price_max)
                return [Intent(Side.BUY, q, price)]
        elif self.discharge_plan[h] and not bought[h]:
            x = min(self.discharge_plan[h] - sold[h], self.hour_wh - sold[h],
                    min(s - spec.min_soc_wh for s in soc[h + 1:]))
            if x >= self.min_order_wh:
                price = min(max(apply_bp(ref, self.sell_bp, round_up=True), self.price_min), self.price_max)
                return [Intent(Side.SELL, x, price)]
        return []

    def on_fill(self, side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> None:
        self.fills.add(side, product_id, qty_wh, price_ticks)

    def planned_profit(self) -> int:
        """Money (units) of the plan at the reference prices: sells minus buys."""
        return sum(d * p - c * p for c, d, p in zip(self.charge_plan, self.discharge_plan, self.prices))


# --------------------------------------------------------------------------- ZI-C


class ZicPlanner:
    """Gode & Sunder's ZI-C trader for live bots.

    ``side``: what the member does; ``limits``: its private unit values (buyer,
    most valuable first) or costs (seller, cheapest first), ticks. Every
    product gets the same endowment (like G&S's trading periods). One unit
    (``unit_wh``) is quoted at a time, at a price drawn uniformly from
    ``[price_min, value]`` (buyer) or ``[cost, price_max]`` (seller): it never
    trades at a loss. Deterministic for ``seed``; each ``plan`` call draws a
    new price (the runner replaces the resting order).
    """

    def __init__(self, side: Side | str, limits: Sequence[int], *, unit_wh: int = 1000, price_min: int = 100,
                 price_max: int = 20_000, seed: int = 0, products: Sequence[str] | None = None) -> None:
        self.side = _side(side)
        lim = list(limits)
        if any(type(x) is not int for x in lim) or not lim:
            raise ValueError("limits: a non-empty list of integer ticks")
        if lim != sorted(lim, reverse=self.side is Side.BUY):
            raise ValueError("buyer values must be non-increasing, seller costs non-decreasing")
        if not all(price_min <= x <= price_max for x in lim) or unit_wh <= 0:
            raise ValueError("limits within [price_min, price_max], unit_wh > 0")
        self.limits = lim
        self.unit_wh = unit_wh
        self.price_min, self.price_max = price_min, price_max
        self.rng = random.Random(f"zic-planner|{seed}")
        self._products = list(products) if products is not None else None
        self.filled: dict[str, int] = {}  # product -> Wh traded
        self.surplus: dict[str, int] = {}  # product -> realised surplus (money units)

    def products(self) -> list[str]:
        return list(self._products or [])

    def units_done(self, product_id: str) -> int:
        return self.filled.get(product_id, 0) // self.unit_wh

    def plan(self, now_us: int, product_id: str, minutes_to_gate: int, state: MarketView) -> list[Intent]:
        if self._products is not None and product_id not in self._products:
            return []
        done = self.filled.get(product_id, 0)
        k = done // self.unit_wh
        if k >= len(self.limits):
            return []
        limit = self.limits[k]
        qty = self.unit_wh - done % self.unit_wh
        if self.side is Side.BUY:
            return [Intent(Side.BUY, qty, self.rng.randint(self.price_min, limit))]
        return [Intent(Side.SELL, qty, self.rng.randint(limit, self.price_max))]

    def on_fill(self, side: Side | str, product_id: str, qty_wh: int, price_ticks: int) -> None:
        if _side(side) is not self.side or qty_wh <= 0:
            raise ValueError(f"a {self.side.value}er cannot get a {side} fill")
        done = self.filled.get(product_id, 0)
        # surplus per unit: (value - price) for a buyer, (price - cost) for a seller, per Wh of the fill
        left = qty_wh
        gain = 0
        while left:
            k = done // self.unit_wh
            if k >= len(self.limits):
                raise ValueError("fill beyond the endowment")
            take = min(left, self.unit_wh - done % self.unit_wh)
            lim = self.limits[k]
            gain += take * ((lim - price_ticks) if self.side is Side.BUY else (price_ticks - lim))
            done += take
            left -= take
        self.filled[product_id] = done
        self.surplus[product_id] = self.surplus.get(product_id, 0) + gain


__all__ = ["BP", "BatteryPlanner", "BatterySpec", "Intent", "MarketView", "Planner", "ProsumerPlanner", "ZicPlanner",
           "apply_bp", "feasible", "ramp_bp", "soc_trajectory"]
