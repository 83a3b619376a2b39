"""Zero-intelligence constrained bots (Gode & Sunder 1993) trading live over the SDK.

Each bot is a buyer or a seller with private unit values (buyer) or costs
(seller); the pure :class:`~clients.bots.strategies.ZicPlanner` quotes one unit
at a time at a random price that can never make a loss. Every requote draws a
new price (the runner replaces the resting order). The bot quotes the
``products`` nearest to their gate.
"""

from __future__ import annotations

import random

from clients.bots.base import Bot, MarketWatch, ProductView
from clients.bots.strategies import ZicPlanner

__all__ = ["ZicBot"]


class ZicBot(Bot):
    role = "prosumer"

    def __init__(self, key, side: str, limits: list[int], *, unit_wh: int = 1000, price_min: int = 100,
                 price_max: int = 20_000, seed: int = 0, products: int = 3) -> None:
        super().__init__(key, f"zic-{side} {key.address[:8]}")
        self.side = side
        self.role = "consumer" if side == "buy" else "prosumer"
        self.planner = ZicPlanner(side, limits, unit_wh=unit_wh, price_min=price_min, price_max=price_max,
                                  seed=seed)
        self.n_products = products
        self.unit_wh = unit_wh

    @classmethod
    def random(cls, key, side: str, rng: random.Random, units: int = 3, **kw) -> ZicBot:
        """Values uniform in 60-160 EUR/MWh (buyers), costs in 20-120 EUR/MWh (sellers)."""
        if side == "buy":
            limits = sorted((rng.randrange(6_000, 16_000) for _ in range(units)), reverse=True)
        else:
            limits = sorted(rng.randrange(2_000, 12_000) for _ in range(units))
        return cls(key, side, limits, **kw)

    def registration(self) -> dict:
        return {**super().registration(), "role": self.role,
                "export_capacity_w": 0 if self.side == "buy" else 10 * self.unit_wh * len(self.planner.limits)}

    def wanted_products(self, watch: MarketWatch) -> list[ProductView]:
        return watch.open_products()[: self.n_products]

    def planner_for(self, product_id: str):
        return self.planner
