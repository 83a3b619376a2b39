"""Product calendar: the delivery periods of a delivery day and their timetable.

A delivery day is a *local* calendar day of the market's time zone. Its
products are the consecutive periods of ``product_minutes`` from local midnight
to the next local midnight, stepped in UTC, so a DST change day has 23 or 25
hourly products. Each product has

* ``open_us``: when order entry opens (local midnight ``open_days_before`` days
  before the delivery day),
* ``gate_us``: gate closure, either the classic day-ahead gate (one local time
  on the day before delivery, 12:00 by default, for all products of the day) or
  rolling (``gate_rolling_minutes`` before the product's delivery start),
* ``start_us`` / ``end_us``: the delivery period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import Enum
from zoneinfo import ZoneInfo

from exchange.core.ids import ProductId
from exchange.core.units import US_PER_MIN, UTC, from_us, iso, to_us


class ProductState(str, Enum):
    PRE_OPEN = "pre_open"
    OPEN = "open"
    AUCTION = "auction"  # a volatility auction: orders rest, nothing matches until it clears
    CLOSED = "closed"  # gate closed, awaiting delivery
    DELIVERED = "delivered"


class GateMode(str, Enum):
    DAY_AHEAD = "day_ahead"
    ROLLING = "rolling"


@dataclass(frozen=True, slots=True)
class CalendarConfig:
    timezone: str = "Europe/Amsterdam"
    product_minutes: int = 60
    gate: GateMode = GateMode.DAY_AHEAD
    gate_day_ahead_local_time: time = time(12, 0)
    gate_rolling_minutes: int = 60
    open_days_before: int = 1

    def __post_init__(self) -> None:
        if 1440 % self.product_minutes:
            raise ValueError("product_minutes must divide a day")
        ZoneInfo(self.timezone)  # raises for an unknown zone
        if self.gate_rolling_minutes < 0 or self.open_days_before < 0:
            raise ValueError("gate_rolling_minutes and open_days_before must be >= 0")
        if self.gate is GateMode.DAY_AHEAD and self.open_days_before < 1:
            raise ValueError("with the day-ahead gate (on D-1), products must open at least one day before delivery")


@dataclass(frozen=True, slots=True)
class Product:
    product_id: ProductId
    delivery_day: date
    start_us: int
    end_us: int
    open_us: int
    gate_us: int

    @property
    def minutes(self) -> int:
        return (self.end_us - self.start_us) // US_PER_MIN

    def state_at(self, now_us: int) -> ProductState:
        if now_us < self.open_us:
            return ProductState.PRE_OPEN
        if now_us < self.gate_us:
            return ProductState.OPEN
        if now_us < self.end_us:
            return ProductState.CLOSED
        return ProductState.DELIVERED

    def to_dict(self) -> dict[str, str]:
        return {
            "product_id": self.product_id,
            "delivery_day": self.delivery_day.isoformat(),
            "start": iso(self.start_us),
            "end": iso(self.end_us),
            "open": iso(self.open_us),
            "gate": iso(self.gate_us),
        }


def product_id_for(start_us: int, minutes: int) -> ProductId:
    """Stable product id: delivery start in UTC and duration, e.g. ``20261122T2300Z-60``."""
    return ProductId(f"{from_us(start_us):%Y%m%dT%H%M}Z-{minutes}")


def product_edge_at_or_before(us: int, zone: ZoneInfo, minutes: int) -> int:
    """The latest instant at or before ``us`` where delivery products of ``minutes`` begin
    and end: local midnight of ``us``'s local day plus whole products (as :meth:`Calendar.products`
    lays them out)."""
    day = from_us(us).astimezone(zone).date()
    midnight = to_us(datetime.combine(day, time(0), tzinfo=zone))
    step = minutes * US_PER_MIN
    return midnight + (us - midnight) // step * step


def is_product_edge(us: int, zone: ZoneInfo, minutes: int) -> bool:
    return product_edge_at_or_before(us, zone, minutes) == us


class Calendar:
    def __init__(self, config: CalendarConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)

    def _local_midnight_us(self, day: date) -> int:
        return to_us(datetime.combine(day, time(0), tzinfo=self.zone))

    def local_date(self, now_us: int) -> date:
        return from_us(now_us).astimezone(self.zone).date()

    def day_open_us(self, day: date) -> int:
        return self._local_midnight_us(day - timedelta(days=self.config.open_days_before))

    def day_ahead_us(self, day: date) -> int:
        """The day-ahead time of delivery day ``day``: D-1 at ``gate_day_ahead_local_time``."""
        return to_us(datetime.combine(day - timedelta(days=1), self.config.gate_day_ahead_local_time,
                                      tzinfo=self.zone))

    def products(self, day: date) -> list[Product]:
        """All products of local delivery day ``day``, in delivery order."""
        cfg = self.config
        start = self._local_midnight_us(day)
        end = self._local_midnight_us(day + timedelta(days=1))
        step = cfg.product_minutes * US_PER_MIN
        open_us = self.day_open_us(day)
        day_ahead_gate = self.day_ahead_us(day)
        out = []
        for s in range(start, end, step):
            gate = day_ahead_gate if cfg.gate is GateMode.DAY_AHEAD else s - cfg.gate_rolling_minutes * US_PER_MIN
            out.append(Product(product_id_for(s, cfg.product_minutes), day, s, s + step, min(open_us, gate), gate))
        return out


__all__ = ["CalendarConfig", "Calendar", "GateMode", "Product", "ProductState", "is_product_edge",
           "product_edge_at_or_before", "product_id_for", "UTC"]
