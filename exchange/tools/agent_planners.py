"""The bots' planners (``clients/bots/strategies.py``) as strategies of the portal's managed
trading agent (``exchange/portal/agent_rules.py``): the composition root hands them to the
portal (``exchange.portal.plugin.AGENT_PLANNERS``), since the portal, a subsystem, may not
import the clients.

- ``prosumer``: :class:`~clients.bots.strategies.ProsumerPlanner` on the member's forecast
  (metering's outlook: the mean of the same hour on the last 7 days of its own meter, import
  as consumption, export as generation): it sells the expected surplus and buys the expected
  deficit of each open product, priced around the middle of the member's tariff (between
  feed-in and import price; else the product's last price; else between its cap and floor),
  never selling below the feed-in tariff nor buying above the import tariff.
- ``battery``: :class:`~clients.bots.strategies.BatteryPlanner` over each local delivery day:
  charges in the day's cheap hours, discharges in its dear ones, by the member's import
  tariff (a time-of-use tariff; else the products' last prices), within the battery's
  capacity and power, never below the signed reserve (the day is assumed to start at the
  reserve: it never sells energy it may not have), round-trip efficiency 90 %.

Every order the agent places is then brought within the signed limits (cap, floor, size)
and checked again (``exchange.portal.agent_rules.fit`` / ``check_order``). Quantities come
from the member's positions in each product (its fills), so the agent never sells more than
the forecast surplus or the battery's charge allows.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from clients.bots.strategies import BatteryPlanner, BatterySpec, Intent, MarketView, ProsumerPlanner
from exchange.portal.agent_rules import AgentStrategy, AgentView, Limits, Order, Slot, StrategyFactory

US_PER_MIN = 60_000_000
EFFICIENCY = Fraction(9, 10)


def _mid_tariff(slot: Slot) -> int | None:
    e = slot.expect
    if e is None or e.import_price is None or e.feed_in_price is None:
        return None
    return (e.import_price + e.feed_in_price) // 2


def _fallback(slot: Slot, limits: Limits) -> int:
    return slot.last_price if slot.last_price is not None else (limits.max_buy_price + limits.min_sell_price) // 2


def _minutes_to_gate(slot: Slot, now_us: int) -> int:
    return max((slot.gate_us - now_us) // US_PER_MIN, 0)


def _market(slot: Slot) -> MarketView:
    return MarketView(None, slot.best_bid, slot.best_ask, slot.last_price)


def _orders(intents: list[Intent]) -> list[Order]:
    return [(i.side.value, i.price_ticks, i.quantity_wh) for i in intents]


def _within_tariff(slot: Slot, orders: list[Order]) -> list[Order]:
    """Never sell below the feed-in tariff nor buy above the import tariff (the grid pays or
    charges better then)."""
    e = slot.expect
    if e is None:
        return orders
    out = []
    for side, price, qty in orders:
        if side == "sell" and e.feed_in_price is not None:
            price = max(price, e.feed_in_price)
        elif side == "buy" and e.import_price is not None:
            price = min(price, e.import_price)
        out.append((side, price, qty))
    return out


class ProsumerStrategy:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._status: str | None = None

    def plan(self, view: AgentView) -> dict[str, list[Order]]:
        known = [s for s in view.slots if s.expect is not None and s.expect.history_days > 0]
        if not known:
            self._status = ("no metered history to forecast from: the agent trades once the member's meter "
                            "readings of the last days are in")
            return {}
        self._status = None
        forecast = {s.product_id: (s.expect.import_wh, s.expect.export_wh) for s in known if s.expect}
        reference = {s.product_id: _mid_tariff(s) or _fallback(s, self.limits) for s in known}
        planner = ProsumerPlanner(forecast, reference, sell_floor_ticks=self.limits.min_sell_price,
                                  buy_cap_ticks=self.limits.max_buy_price)
        for s in known:  # what the member already has in each product (its fills, manual or the agent's)
            if s.bought_wh:
                planner.on_fill("buy", s.product_id, s.bought_wh, 0)
            if s.sold_wh:
                planner.on_fill("sell", s.product_id, s.sold_wh, 0)
        return {s.product_id: _within_tariff(s, _orders(planner.plan(view.now_us, s.product_id,
                                                                      _minutes_to_gate(s, view.now_us), _market(s))))
                for s in known if s.tradable}

    def status(self) -> str | None:
        return self._status


class BatteryStrategy:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        reserve = limits.battery_reserve_wh
        self.spec = BatterySpec(limits.battery_capacity_wh, limits.battery_power_w, EFFICIENCY,
                                min_soc_wh=reserve, initial_soc_wh=reserve)
        # local delivery day -> its planner (schedule fixed when first seen) and the fills reported to it
        self._days: dict[date, tuple[BatteryPlanner, dict[str, tuple[int, int]]]] = {}
        self._status: str | None = None

    def _reference(self, slot: Slot) -> int:
        e = slot.expect
        return e.import_price if e is not None and e.import_price is not None else _fallback(slot, self.limits)

    def plan(self, view: AgentView) -> dict[str, list[Order]]:
        days: dict[date, list[Slot]] = {}
        for s in view.slots:
            days.setdefault(s.local_day, []).append(s)
        out: dict[str, list[Order]] = {}
        idle = True
        for day, slots in days.items():
            entry = self._days.get(day)
            if entry is None or any(s.product_id not in entry[0].index for s in slots):
                minutes = (slots[0].end_us - slots[0].start_us) // US_PER_MIN
                planner = BatteryPlanner(self.spec, {s.product_id: self._reference(s) for s in slots},
                                         product_minutes=minutes)
                entry = self._days[day] = (planner, {})
            planner, reported = entry
            idle = idle and not planner.products()
            for s in slots:  # fills since the last round (positions only grow)
                b, so = reported.get(s.product_id, (0, 0))
                if s.bought_wh > b:
                    planner.on_fill("buy", s.product_id, s.bought_wh - b, 0)
                if s.sold_wh > so:
                    planner.on_fill("sell", s.product_id, s.sold_wh - so, 0)
                reported[s.product_id] = (s.bought_wh, s.sold_wh)
            for s in slots:
                if s.tradable:
                    out[s.product_id] = _orders(planner.plan(view.now_us, s.product_id,
                                                             _minutes_to_gate(s, view.now_us), _market(s)))
        for day in [d for d in self._days if d not in days]:  # delivered days
            del self._days[day]
        self._status = ("no price differences over the day to charge and discharge on (the agent follows the "
                        "member's time-of-use tariff, else the products' last prices)" if idle and days else None)
        return out

    def status(self) -> str | None:
        return self._status


def _prosumer(limits: Limits) -> AgentStrategy:
    return ProsumerStrategy(limits)


def _battery(limits: Limits) -> AgentStrategy:
    return BatteryStrategy(limits)


#: what the composition root gives the portal (exchange.portal.plugin.AGENT_PLANNERS)
PLANNERS: dict[str, StrategyFactory] = {"prosumer": _prosumer, "battery": _battery}
