"""The managed trading agent's rules: the limits a member signs in its delegation, what the
agent sees of the market (:class:`AgentView`), the strategies' interface, the built-in
``limits`` strategy, and the check every order of the agent passes before it reaches the
engine. Pure (no I/O), integers only.

Strategies (``Limits.strategy``):

- ``limits`` (built in): in the next 4 open products whose local delivery hour the member
  did not exclude, the agent rests a buy of ``max_order_wh`` at ``max_buy_price`` and a sell
  of ``max_order_wh`` at ``min_sell_price``: it takes any offer at or below the member's cap
  and any bid at or above its floor, and never trades outside them.
- ``prosumer`` and ``battery``: the bots' planners (``clients/bots/strategies.py``) driven by
  the member's forecast (metering's outlook: its own metered history and tariff). The
  composition root (``exchange/tools``) supplies them; a deployment without them offers
  ``limits`` only.

Whatever the strategy, :func:`fit` brings every wanted order within the signed limits and
:func:`check_order` refuses what is still outside them. Buys count against ``daily_budget``
(money units) per local day at their full limit value when placed, so a day's buys never
exceed it even if all fill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

BUILT_IN = ("limits",)
#: every strategy a delegation may name (the composition root supplies those not built in)
STRATEGIES = ("limits", "prosumer", "battery")
MAX_DELEGATION_DAYS = 30
#: how many of the next open products the ``limits`` strategy trades in
PRODUCTS_AHEAD = 4


@dataclass(frozen=True, slots=True)
class Limits:
    strategy: str
    max_buy_price: int       # ticks; the agent never buys above it
    min_sell_price: int      # ticks; the agent never sells below it
    max_order_wh: int        # per order (and per product and side resting at once)
    daily_budget: int        # money units of buys placed per local day
    battery_reserve_wh: int  # kept for the member's own use: the battery strategy never plans below it
    excluded_hours: frozenset[int]  # local delivery hours the agent leaves alone
    expiry: int              # Unix seconds
    battery_capacity_wh: int = 0  # the member's battery (the battery strategy); 0: none
    battery_power_w: int = 0

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Limits:
        hours = frozenset(int(h) for h in str(m["excludedHours"]).split(",") if h.strip() != "")
        return cls(str(m["strategy"]), int(m["maxBuyPrice"]), int(m["minSellPrice"]), int(m["maxOrderWh"]),
                   int(m["dailyBudget"]), int(m["batteryReserveWh"]), hours, int(m["expiry"]),
                   int(m["batteryCapacityWh"]), int(m["batteryPowerW"]))

    def problems(self, now_s: int, price_min: int, price_max: int,
                 available: Sequence[str] = BUILT_IN, max_order_value: int = 0) -> list[str]:
        """Why these limits cannot be accepted (empty: they can); ``available``: the
        strategies this deployment runs; ``max_order_value``: the market's cap on an order's
        value (money units; 0: none), which an order of ``max_order_wh`` at the buy cap or
        the sell floor must respect (the market would refuse every such order)."""
        out = []
        if self.strategy not in available:
            out.append(f"strategy must be one of {', '.join(available)}")
        if not price_min <= self.max_buy_price <= price_max or not price_min <= self.min_sell_price <= price_max:
            out.append(f"prices must be within the market's bounds [{price_min}, {price_max}] ticks")
        if self.min_sell_price <= self.max_buy_price:
            out.append("the sell floor must be above the buy cap (the agent would trade with itself)")
        if not 1 <= self.max_order_wh <= 10**9:
            out.append("max order must be 1 Wh to 1 GWh")
        elif max_order_value:
            worth = max(abs(self.max_buy_price), abs(self.min_sell_price)) * self.max_order_wh
            if worth > max_order_value:
                most = max_order_value // max(abs(self.max_buy_price), abs(self.min_sell_price))
                out.append(f"an order of {self.max_order_wh} Wh at these prices is worth {worth} money units, above "
                           f"the market's maximum order value {max_order_value}: at most {most} Wh per order")
        if not 0 <= self.daily_budget <= 10**17:
            out.append("daily budget out of range")
        if not 0 <= self.battery_reserve_wh <= 10**9:
            out.append("battery reserve out of range")
        if not 0 <= self.battery_capacity_wh <= 10**9 or not 0 <= self.battery_power_w <= 10**9:
            out.append("battery capacity and power out of range")
        elif self.strategy == "battery" and (self.battery_capacity_wh <= 0 or self.battery_power_w <= 0):
            out.append("the battery strategy needs the battery's capacity and power")
        elif self.battery_capacity_wh and self.battery_reserve_wh >= self.battery_capacity_wh:
            out.append("the battery reserve must be below the battery's capacity")
        if any(not 0 <= h <= 23 for h in self.excluded_hours):
            out.append("excluded hours are local hours 0-23")
        if not now_s < self.expiry <= now_s + MAX_DELEGATION_DAYS * 86_400:
            out.append(f"expiry must be in the future and at most {MAX_DELEGATION_DAYS} days away")
        return out


# --------------------------------------------------------------------------- what the agent sees


@dataclass(frozen=True, slots=True)
class Expectation:
    """The member's forecast for one product (exchange.runtime.ports.Outlook)."""

    import_wh: int
    export_wh: int
    history_days: int  # 0: nothing known
    import_price: int | None
    feed_in_price: int | None


@dataclass(frozen=True, slots=True)
class Slot:
    """One listed product, as the agent sees it."""

    product_id: str
    start_us: int
    end_us: int
    gate_us: int
    local_day: date
    local_hour: int
    tradable: bool           # open, and its hour not excluded: the agent may rest orders in it
    last_price: int | None   # the product's last trade (or auction) price
    best_bid: int | None
    best_ask: int | None
    bought_wh: int           # the member's trades in it so far (manual ones and the agent's)
    sold_wh: int
    expect: Expectation | None


@dataclass(frozen=True, slots=True)
class AgentView:
    now_us: int
    slots: tuple[Slot, ...]  # every listed product not yet delivered, in delivery order


Order = tuple[str, int, int]  # (side, price ticks, quantity Wh)


class AgentStrategy(Protocol):
    def plan(self, view: AgentView) -> dict[str, list[Order]]:
        """The orders the member wants resting now, per tradable product: the complete
        target (a tradable product it leaves out rests nothing)."""
        ...

    def status(self) -> str | None:
        """Why it wants nothing, in plain words for the member (None: nothing to explain)."""
        ...


StrategyFactory = Callable[[Limits], AgentStrategy]


class LimitsStrategy:
    """``limits``: a buy at the cap and a sell at the floor in each of the next open products."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def plan(self, view: AgentView) -> dict[str, list[Order]]:
        lim = self.limits
        return {s.product_id: [("buy", lim.max_buy_price, lim.max_order_wh),
                               ("sell", lim.min_sell_price, lim.max_order_wh)]
                for s in [s for s in view.slots if s.tradable][:PRODUCTS_AHEAD]}

    def status(self) -> str | None:
        return None


def strategies(extra: Mapping[str, StrategyFactory] | None = None) -> dict[str, StrategyFactory]:
    """The built-in strategies plus those the composition root supplies (known names only)."""
    out: dict[str, StrategyFactory] = {"limits": LimitsStrategy}
    for name, factory in (extra or {}).items():
        if name not in STRATEGIES:
            raise ValueError(f"unknown agent strategy {name!r} (one of {', '.join(STRATEGIES)})")
        out[name] = factory
    return out


# --------------------------------------------------------------------------- within the limits


def fit(limits: Limits, orders: Sequence[Order], max_order_value: int = 0) -> list[Order]:
    """``orders`` brought within the limits: buys at most the cap, sells at least the floor,
    each at most ``max_order_wh`` and, with the market's ``max_order_value`` (money units; 0:
    none), worth at most that (a bigger one is cut, not split), nothing empty."""
    out = []
    for side, price, qty in orders:
        price = min(price, limits.max_buy_price) if side == "buy" else max(price, limits.min_sell_price)
        qty = min(qty, limits.max_order_wh)
        if max_order_value and abs(price) * qty > max_order_value:
            qty = max_order_value // abs(price)
        if qty > 0:
            out.append((side, price, qty))
    return out


def budget_cost(side: str, price: int, quantity: int) -> int:
    """What an order counts against the daily budget: a buy its full limit value, never less
    than nothing (a buy at a negative price pays the member, and cancelled unfilled it must not
    lower the day's count below what was placed at positive prices); a sell nothing."""
    return price * quantity if side == "buy" and price > 0 else 0


def check_order(limits: Limits, side: str, price: int, quantity: int, local_hour: int, now_s: int,
                spent_today: int) -> str | None:
    """Why the agent may not place this order (None: it may)."""
    if now_s >= limits.expiry:
        return "the delegation has expired"
    if local_hour in limits.excluded_hours:
        return f"delivery hour {local_hour} is excluded"
    if quantity > limits.max_order_wh:
        return f"{quantity} Wh is above the {limits.max_order_wh} Wh per order"
    if side == "buy":
        if price > limits.max_buy_price:
            return f"buy price {price} is above the cap {limits.max_buy_price}"
        if spent_today + budget_cost(side, price, quantity) > limits.daily_budget:
            return "the daily budget would be exceeded"
    elif price < limits.min_sell_price:
        return f"sell price {price} is below the floor {limits.min_sell_price}"
    return None


def changes(target: Sequence[Order], resting: Mapping[int, Order]) -> tuple[list[int], list[Order]]:
    """What to cancel (order ids) and to place so that what rests meets ``target``. A resting
    order stays, keeping its time priority, while a wanted order has its side and price and
    at least its remaining quantity (a partly filled order is not topped up: the rest of the
    wanted quantity is placed when it has filled); every other resting order is cancelled."""
    left = list(target)
    cancel = []
    for oid, (side, price, remaining) in sorted(resting.items()):
        match = next((i for i, (s, p, q) in enumerate(left) if s == side and p == price and remaining <= q), None)
        if match is None:
            cancel.append(oid)
        else:
            del left[match]
    return cancel, left
