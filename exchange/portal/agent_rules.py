"""The managed trading agent's rules: the limits a member signs in its delegation, the check
every order of the agent passes before it reaches the engine, and what the agent wants to
rest in a product. Pure (no I/O), integers only.

The strategy (``limits``): in every open product whose local delivery hour the member did not
exclude, the agent rests a buy of ``max_order_wh`` at ``max_buy_price`` and a sell of
``max_order_wh`` at ``min_sell_price`` (as long as the daily budget allows the buy): it
takes any offer at or below the member's cap and any bid at or above its floor, and never
trades outside them. Buys count against ``daily_budget`` (money units) per local day at
their full limit value when placed, so a day's buys never exceed it even if all fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STRATEGIES = ("limits",)
MAX_DELEGATION_DAYS = 30


@dataclass(frozen=True, slots=True)
class Limits:
    strategy: str
    max_buy_price: int       # ticks; the agent never buys above it
    min_sell_price: int      # ticks; the agent never sells below it
    max_order_wh: int        # per order (and per product and side resting at once)
    daily_budget: int        # money units of buys placed per local day
    battery_reserve_wh: int  # kept for the member's own use (0: no battery); not sold from
    excluded_hours: frozenset[int]  # local delivery hours the agent leaves alone
    expiry: int              # Unix seconds

    @classmethod
    def from_message(cls, m: dict[str, Any]) -> Limits:
        hours = frozenset(int(h) for h in str(m["excludedHours"]).split(",") if h.strip() != "")
        return cls(str(m["strategy"]), int(m["maxBuyPrice"]), int(m["minSellPrice"]), int(m["maxOrderWh"]),
                   int(m["dailyBudget"]), int(m["batteryReserveWh"]), hours, int(m["expiry"]))

    def problems(self, now_s: int, price_min: int, price_max: int) -> list[str]:
        """Why these limits cannot be accepted (empty: they can)."""
        out = []
        if self.strategy not in STRATEGIES:
            out.append(f"strategy must be one of {', '.join(STRATEGIES)}")
        if not price_min <= self.max_buy_price <= price_max or not price_min <= self.min_sell_price <= price_max:
            out.append(f"prices must be within the market's bounds [{price_min}, {price_max}] ticks")
        if self.min_sell_price <= self.max_buy_price:
            out.append("the sell floor must be above the buy cap (the agent would trade with itself)")
        if not 1 <= self.max_order_wh <= 10**9:
            out.append("max order must be 1 Wh to 1 GWh")
        if not 0 <= self.daily_budget <= 10**17:
            out.append("daily budget out of range")
        if not 0 <= self.battery_reserve_wh <= 10**9:
            out.append("battery reserve out of range")
        if any(not 0 <= h <= 23 for h in self.excluded_hours):
            out.append("excluded hours are local hours 0-23")
        if not now_s < self.expiry <= now_s + MAX_DELEGATION_DAYS * 86_400:
            out.append(f"expiry must be in the future and at most {MAX_DELEGATION_DAYS} days away")
        return out


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
        if spent_today + price * quantity > limits.daily_budget:
            return "the daily budget would be exceeded"
    elif price < limits.min_sell_price:
        return f"sell price {price} is below the floor {limits.min_sell_price}"
    return None


def wanted(limits: Limits, resting: dict[str, int], local_hour: int) -> list[tuple[str, int, int]]:
    """The orders (side, price, quantity) the agent adds in one open product, given what it
    has resting there (Wh per side)."""
    if local_hour in limits.excluded_hours:
        return []
    out = []
    if resting.get("buy", 0) == 0:
        out.append(("buy", limits.max_buy_price, limits.max_order_wh))
    if resting.get("sell", 0) == 0:
        out.append(("sell", limits.min_sell_price, limits.max_order_wh))
    return out
