"""Pre-trade price controls, pure: dynamic price bands, maximum order value,
volatility interruptions and the order-to-trade ratio limit.

Every control is off at its zero value, so a market whose stored configuration
predates them replays unchanged. Prices are integer ticks, values integer money
units; a band or range around a reference price ``ref`` is
``max(min_ticks, |ref| * bp // 10_000)`` ticks wide on each side, so it still
means something when prices are near zero or negative.

* **Price band** (CME-style): with a reference price (the product's last trade
  or auction price), a buy above ``ref + band`` or a sell below ``ref - band`` is
  refused (``PRICE_OUTSIDE_BAND``). Passive prices are not limited: they cannot
  trade at a price worse for the market than their own.
* **Maximum order value** (fat finger): ``quantity * |price|`` above the limit is
  refused (``ORDER_VALUE_TOO_LARGE``).
* **Volatility interruption**: continuous matching stops before a trade whose
  price lies outside ``ref +- range``; the product goes into a volatility auction
  for ``volatility_auction_s`` seconds (orders rest, nothing matches), then
  reopens with a uniform-price call auction and continuous trading resumes.
* **Order-to-trade ratio**: per member and product, order entries and
  modifications may not exceed ``otr_free + otr_max * fills``; further entries
  are refused (``ORDER_TO_TRADE_RATIO``). Cancels are never refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from exchange.core.ids import MemberId


@dataclass(frozen=True, slots=True)
class PriceControls:
    price_band_bp: int = 0  # band around the reference, basis points of |ref| (0 with min 0: off)
    price_band_min_ticks: int = 0  # the band is at least this wide
    max_order_value: int = 0  # money units (1e-8 EUR) per order; 0: no limit
    volatility_bp: int = 0  # volatility range around the reference, basis points of |ref|
    volatility_min_ticks: int = 0  # the range is at least this wide (0 with bp 0: off)
    volatility_auction_s: int = 60  # length of a volatility auction, seconds
    otr_max: int = 0  # order entries allowed per fill (0: off)
    otr_free: int = 200  # order entries allowed per member and product before the ratio applies

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if type(v) is not int or v < 0:
                raise ValueError(f"price controls: {name} must be an integer >= 0")
        if self.volatility_auction_s < 1:
            raise ValueError("price controls: volatility_auction_s must be >= 1")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PriceControls:
        return cls(**d) if d else cls()

    # ------------------------------------------------------------------ checks
    @property
    def banded(self) -> bool:
        return bool(self.price_band_bp or self.price_band_min_ticks)

    @property
    def volatility_on(self) -> bool:
        return bool(self.volatility_bp or self.volatility_min_ticks)


def width(ref: int, bp: int, min_ticks: int) -> int:
    """Half-width in ticks of a band or range around ``ref``."""
    w = abs(ref) * bp // 10_000
    return w if w > min_ticks else min_ticks


def band_violation(c: PriceControls, ref: int | None, buy: bool, price: int) -> str | None:
    """Why an order at ``price`` is outside the dynamic band (None when it is not)."""
    if ref is None or not c.banded:
        return None
    w = width(ref, c.price_band_bp, c.price_band_min_ticks)
    if buy and price > ref + w:
        return f"buy price {price} above the band's upper limit {ref + w} (reference {ref} +- {w} ticks)"
    if not buy and price < ref - w:
        return f"sell price {price} below the band's lower limit {ref - w} (reference {ref} +- {w} ticks)"
    return None


def value_violation(c: PriceControls, price: int, quantity: int) -> str | None:
    if not c.max_order_value:
        return None
    value = abs(price) * quantity
    if value > c.max_order_value:
        return f"order value {value} money units above the maximum {c.max_order_value}"
    return None


def triggers_interruption(c: PriceControls, ref: int | None, price: int) -> bool:
    """Whether a trade at ``price`` would leave the volatility range around ``ref``."""
    if ref is None or not c.volatility_on:
        return False
    return abs(price - ref) > width(ref, c.volatility_bp, c.volatility_min_ticks)


def otr_violation(c: PriceControls, counts: Mapping[MemberId, list[int]], member: MemberId) -> str | None:
    """``counts[member]`` is [order entries, fills] in one product."""
    if not c.otr_max:
        return None
    entries, fills = counts.get(member, (0, 0))
    allowed = c.otr_free + c.otr_max * fills
    if entries >= allowed:
        return (f"{entries} order entries for {fills} fills in this product: the limit is "
                f"{c.otr_free} + {c.otr_max} per fill")
    return None
