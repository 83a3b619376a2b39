"""Prosumer (and consumer) bots: hourly buys and sells from a 24-hour forecast.

The forecast is the member's community profile (:mod:`clients.community.profiles`:
BDEW load profile + clear-sky PV, seeded noise) for each delivery day the
exchange lists; the pure :class:`~clients.bots.strategies.ProsumerPlanner`
turns it into sells in surplus hours and buys in deficit hours, priced at a
percentage of the hour's reference price that moves towards (and past) the
reference as the gate approaches, never selling below the feed-in tariff nor
buying above the retail tariff. What it sold it delivers: the runner's
delivery is the forecast (``planner.delivery``), and it never sells more than
the forecast surplus.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from clients.bots.base import Bot, MarketWatch
from clients.bots.metering import BotMeter
from clients.bots.strategies import ProsumerPlanner
from clients.community.profiles import COMMUNITY_TZ, Location, community_profiles, hourly_table, make_community
from exchange.core.calendar import product_id_for
from exchange.core.units import from_us

__all__ = ["CommunityData", "ProsumerBot", "reference_prices"]

RETAIL_TICKS = 30_000  # 300.00 EUR/MWh
FEED_IN_TICKS = 8_000  # 80.00 EUR/MWh
COLLATERAL = 10_000 * 10**8  # 10 000 EUR in units of 1e-8 EUR

# A typical day-ahead shape by local hour, in ticks (0.01 EUR/MWh): cheap at night and at the
# solar noon, expensive at the morning and evening peaks.
_SHAPE = (9_000, 8_600, 8_300, 8_200, 8_400, 9_200, 11_000, 13_500, 14_500, 13_000, 11_000, 9_500,
          9_000, 9_000, 9_800, 11_500, 13_500, 16_000, 18_000, 17_000, 15_000, 13_000, 11_500, 10_000)


def reference_prices(product_ids: list[str], tz: str = COMMUNITY_TZ) -> dict[str, int]:
    """Reference price (ticks) per product from its local start hour."""
    zone = ZoneInfo(tz)
    out = {}
    for pid in product_ids:
        start = datetime.strptime(pid.split("-")[0], "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
        out[pid] = _SHAPE[start.astimezone(zone).hour]
    return out


class CommunityData:
    """The community's members (``make_community`` with the bots' addresses as ids) and their
    hourly forecasts per delivery day, computed once per day for all bots."""

    def __init__(self, addresses: list[str], seed: str | int = 1, tz: str = COMMUNITY_TZ) -> None:
        self.seed = int(seed) if str(seed).isdigit() else abs(hash(str(seed))) % 10**6
        self.members = make_community(len(addresses), seed=self.seed, ids=addresses)
        self.tz = tz
        self._tables: dict[date, dict] = {}
        self._refs: dict[date, dict[str, int]] = {}

    def table(self, day: date) -> dict[str, dict[str, tuple[int, int]]]:
        t = self._tables.get(day)
        if t is None:
            t = self._tables[day] = hourly_table(community_profiles(self.members, day, Location(timezone=self.tz),
                                                                    self.seed))
        return t

    def hour_energy(self, address: str, hour_start_us: int) -> tuple[int, int]:
        """``address``'s forecast (consumption Wh, generation Wh) of the UTC hour starting at
        ``hour_start_us`` (from the table of the local day it starts in; (0, 0) when unknown)."""
        day = from_us(hour_start_us).astimezone(ZoneInfo(self.tz)).date()
        return self.table(day).get(address, {}).get(product_id_for(hour_start_us, 60), (0, 0))

    def references(self, day: date, product_ids: list[str]) -> dict[str, int]:
        r = self._refs.get(day)
        if r is None:
            r = self._refs[day] = reference_prices(product_ids, self.tz)
        return r


class ProsumerBot(Bot):
    """A consumer or prosumer: one :class:`ProsumerPlanner` per delivery day."""

    def __init__(self, key, member, data: CommunityData, *, sell_start_bp: int = 11_500, sell_end_bp: int = 9_500,
                 buy_start_bp: int = 8_500, buy_end_bp: int = 10_500, ramp_minutes: int = 180) -> None:
        super().__init__(key, f"{member.kind} {key.address[:8]}")
        self.member = member
        self.data = data
        self.role = "consumer" if member.kind == "consumer" else "prosumer"
        self.params = dict(sell_start_bp=sell_start_bp, sell_end_bp=sell_end_bp, buy_start_bp=buy_start_bp,
                           buy_end_bp=buy_end_bp, ramp_minutes=ramp_minutes)
        self.planners: dict[date, ProsumerPlanner] = {}
        self.day_of: dict[str, date] = {}
        self.meter = BotMeter(key.address, data)

    def registration(self) -> dict:
        return {**super().registration(), "role": self.role, "export_capacity_w": self.member.pv_wp,
                "retail_tariff_ticks": RETAIL_TICKS, "feed_in_tariff_ticks": FEED_IN_TICKS,
                "collateral": COLLATERAL}

    def on_new_day(self, day: date, product_ids: list[str], watch: MarketWatch) -> None:
        tz = watch.config.get("calendar", {}).get("timezone")
        if tz:
            self.data.tz = tz
        forecast = {pid: v for pid, v in self.data.table(day).get(self.address, {}).items() if pid in product_ids}
        self.planners[day] = ProsumerPlanner(forecast, self.data.references(day, product_ids),
                                             sell_floor_ticks=FEED_IN_TICKS, buy_cap_ticks=RETAIL_TICKS,
                                             price_min=watch.config.get("price_min", -50_000),
                                             price_max=watch.config.get("price_max", 400_000), **self.params)
        for pid in product_ids:
            self.day_of[pid] = day

    def planner_for(self, product_id: str):
        day = self.day_of.get(product_id)
        return self.planners.get(day) if day is not None else None
