"""Units of the exchange. Everything on the energy and money path is an integer.

* Energy: watt-hours (Wh). Power: watts (W).
* Price: ticks of 0.01 EUR/MWh (= 1e-8 EUR/Wh = 0.001 ct/kWh).
* Money: Wh x ticks is exact in units of 1e-8 EUR ("money units"); the
  settlement token uses 8 decimals, so one money unit is one token base unit.
* Time: inside the engine, integer microseconds since the Unix epoch (UTC);
  at the edges, timezone-aware ``datetime`` objects in UTC.
"""

from __future__ import annotations

from datetime import UTC as UTC  # re-exported: the one time zone of the engine
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

US_PER_S = 1_000_000
US_PER_MIN = 60 * US_PER_S
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: 1 EUR/MWh = 100 ticks.
TICKS_PER_EUR_PER_MWH = 100
#: One money unit is 1e-8 EUR.
MONEY_UNITS_PER_EUR = 100_000_000


def money(energy_wh: int, price_ticks: int) -> int:
    """Exact value of ``energy_wh`` at ``price_ticks``, in money units (1e-8 EUR)."""
    return energy_wh * price_ticks


def eur(money_units: int) -> Decimal:
    """Money units as an exact ``Decimal`` amount of euros (display only)."""
    return Decimal(money_units).scaleb(-8)


def div_half_even(n: int, d: int) -> int:
    """``n / d`` rounded to the nearest integer, ties to even (``d > 0``), exactly."""
    if d <= 0:
        raise ValueError("divisor must be positive")
    q, r = divmod(n, d)
    r2 = 2 * r
    if r2 > d or (r2 == d and q % 2):
        q += 1
    return q


def eur_cents_half_even(money_units: int) -> int:
    """Round money units to whole euro cents, half-even.

    This is the one documented place where the exchange rounds: a transfer in
    a currency with cents. Everything else stays exact.
    """
    return int((Decimal(money_units) / Decimal(1_000_000)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def price_ticks(eur_per_mwh: str | Decimal | int) -> int:
    """Parse an EUR/MWh amount (string or Decimal, never float) into ticks; must be exact."""
    if isinstance(eur_per_mwh, float):  # pragma: no cover - defensive
        raise TypeError("prices are never floats")
    d = Decimal(eur_per_mwh) * TICKS_PER_EUR_PER_MWH
    if d != d.to_integral_value():
        raise ValueError(f"{eur_per_mwh} EUR/MWh is not a whole number of 0.01 EUR/MWh ticks")
    return int(d)


def price_eur_per_mwh(ticks: int) -> Decimal:
    return Decimal(ticks).scaleb(-2)


def to_us(dt: datetime) -> int:
    """Aware datetime -> integer microseconds since the epoch (UTC)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: times must be timezone-aware")
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


@lru_cache(maxsize=4096)
def from_us(us: int) -> datetime:
    """Integer microseconds since the epoch -> aware UTC datetime. Cached (datetimes are
    immutable): a command's events share their time, and every consumer of the committed
    stream (journal rows, acks, feeds, reports) converts it again."""
    return EPOCH + timedelta(microseconds=us)


@lru_cache(maxsize=1024)
def _iso_second(s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of the second ``s`` since the epoch (UTC)."""
    return (EPOCH + timedelta(seconds=s)).isoformat()[:19]


def iso(us: int) -> str:
    """The exchange's one time format: ISO 8601 in UTC with ``Z``, exactly what
    ``from_us(us).isoformat()`` gives with ``Z`` for ``+00:00`` (the fraction only when it is
    not zero). Every command has a time of its own, so a cache of whole strings missed on
    most calls; the date and time of day are cached per second, and the fraction appended."""
    s, f = divmod(us, US_PER_S)
    return f"{_iso_second(s)}.{f:06d}Z" if f else _iso_second(s) + "Z"


def iso_dt(t: datetime) -> str:
    """:func:`iso` of an aware datetime (a database timestamp, the wall clock)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
