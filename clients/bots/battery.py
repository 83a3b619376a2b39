"""Battery bots: buy in cheap hours, sell in expensive ones, within the battery's limits.

The pure :class:`~clients.bots.strategies.BatteryPlanner` schedules a day's
arbitrage from the reference prices (charge/discharge pairs ranked by margin,
feasible within min/max state of charge, the power limit and the round-trip
efficiency); its intents are capped by what the fills so far allow, so the
realised schedule stays feasible whatever trades.
"""

from __future__ import annotations

from datetime import date

from clients.bots.base import Bot, MarketWatch
from clients.bots.metering import BotMeter
from clients.bots.prosumer import COLLATERAL, FEED_IN_TICKS, RETAIL_TICKS, CommunityData
from clients.bots.strategies import BatteryPlanner, BatterySpec

__all__ = ["BatteryBot"]


class BatteryBot(Bot):
    """A member with a battery (the community's aggregator included): one planner per day."""

    def __init__(self, key, member, data: CommunityData, *, buy_bp: int = 10_300, sell_bp: int = 9_700) -> None:
        super().__init__(key, f"{member.kind} {key.address[:8]}")
        if member.battery is None:
            raise ValueError("a battery bot needs a member with a battery")
        self.member = member
        self.data = data
        self.role = "aggregator" if member.kind == "aggregator" else "battery"
        self.spec = BatterySpec.from_battery(member.battery)
        self.params = dict(buy_bp=buy_bp, sell_bp=sell_bp)
        self.planners: dict[date, BatteryPlanner] = {}
        self.day_of: dict[str, date] = {}
        self.meter = BotMeter(key.address, data)  # the household's profile; the battery is not metered

    def registration(self) -> dict:
        return {**super().registration(), "role": self.role,
                "export_capacity_w": self.member.pv_wp + self.member.battery.power_w,
                "retail_tariff_ticks": RETAIL_TICKS, "feed_in_tariff_ticks": FEED_IN_TICKS,
                "collateral": COLLATERAL * (10 if self.role == "aggregator" else 1)}

    def on_new_day(self, day: date, product_ids: list[str], watch: MarketWatch) -> None:
        minutes = watch.config.get("calendar", {}).get("product_minutes", 60)
        self.planners[day] = BatteryPlanner(self.spec, self.data.references(day, product_ids),
                                            product_minutes=minutes, **self.params)
        for pid in product_ids:
            self.day_of[pid] = day

    def planner_for(self, product_id: str):
        day = self.day_of.get(product_id)
        return self.planners.get(day) if day is not None else None
