"""The ``trades`` projection's reads, in one place (the journal writes it, in the same
transaction as the journal rows). Reads run on a pool of their own so that no reader
queues behind the journal writer's commits, and only ever see committed trades.

Settlement reads this table with SQL of its own (its batches are trade-id ranges in its own
``settlement_batches``; it writes nothing here): see docs/architecture.md, "Known coupling"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exchange.core.units import iso_dt


@dataclass(frozen=True, slots=True)
class Pair:
    seller: str
    buyer: str
    energy_wh: int
    money: int  # energy x price, money units of 1e-8 EUR
    trades: int


@dataclass(frozen=True, slots=True)
class PairProduct:
    """Trades of one buyer with one seller in one product: energy (Wh) and money (1e-8 EUR)."""

    buyer: str
    seller: str
    product_id: str
    delivery_start: datetime
    energy_wh: int
    money_units: int


@dataclass(frozen=True, slots=True)
class ProductStats:
    product_id: str
    energy_wh: int
    trades: int
    last_price: int | None


class TradeStore:
    def __init__(self, pool: asyncpg.Pool, market_id: str) -> None:
        self.pool = pool  # the read pool (never the journal writer's)
        self.market_id = market_id

    async def public(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Committed trades after ``seq`` (no member names)."""
        rows = await self.pool.fetch(
            "SELECT trade_id, seq, product_id, delivery_start, energy_wh, price_ticks, ts FROM trades "
            "WHERE market_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", self.market_id, after, limit)
        return [{**dict(r), "delivery_start": iso_dt(r["delivery_start"]), "ts": iso_dt(r["ts"])} for r in rows]

    async def of_product(self, product_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        """A product's committed trades with buyer, seller and orders (operator view)."""
        rows = await self.pool.fetch(
            "SELECT trade_id, seq, product_id, delivery_start, buyer, seller, buy_order_id, sell_order_id, "
            "energy_wh, price_ticks, ts FROM trades WHERE market_id = $1 AND product_id = $2 AND seq > $3 "
            "ORDER BY seq LIMIT $4", self.market_id, product_id, after, limit)
        return [{**dict(r), "delivery_start": iso_dt(r["delivery_start"]), "ts": iso_dt(r["ts"])} for r in rows]

    async def of_member(self, member: str, after: int, product_id: str | None, limit: int) -> list[asyncpg.Record]:
        """A member's trades (as buyer or seller) after ``seq``."""
        # Two index range scans (trades_buyer, trades_seller: market, member, seq), each stopping
        # after ``limit`` rows, merged (UNION: a self-trade, where allowed, once): the cost does not
        # grow with the member's history.
        cols = "trade_id, seq, product_id, buyer, seller, energy_wh, price_ticks, ts"
        side = (f"SELECT {cols} FROM trades WHERE market_id = $1 AND {{who}} = $2 AND seq > $3 "
                "AND ($4::text IS NULL OR product_id = $4) ORDER BY seq LIMIT $5")
        return await self.pool.fetch(
            f"SELECT {cols} FROM (({side.format(who='buyer')}) UNION ({side.format(who='seller')})) t "
            "ORDER BY seq LIMIT $5", self.market_id, member, after, product_id, limit)

    async def position_totals(self, upto: int) -> list[tuple[str, str, int, int, int]]:
        """(member, product, bought Wh, sold Wh, payable) of every member and product, over the
        trades with ``seq <= upto``."""
        rows = await self.pool.fetch(
            "SELECT member, product_id, sum(bought)::bigint AS bought, sum(sold)::bigint AS sold, "
            "sum(payable) AS payable FROM ("
            " SELECT buyer AS member, product_id, sum(energy_wh) AS bought, 0 AS sold, "
            "  sum(energy_wh::numeric * price_ticks) AS payable FROM trades WHERE market_id = $1 AND seq <= $2 "
            "  GROUP BY buyer, product_id"
            " UNION ALL"
            " SELECT seller, product_id, 0, sum(energy_wh), -sum(energy_wh::numeric * price_ticks) FROM trades "
            "  WHERE market_id = $1 AND seq <= $2 GROUP BY seller, product_id"
            ") t GROUP BY member, product_id", self.market_id, upto)
        return [(r["member"], r["product_id"], int(r["bought"]), int(r["sold"]), int(r["payable"])) for r in rows]

    async def pair_products(self, start: datetime, end: datetime, member: str | None = None) -> list[PairProduct]:
        """The committed trades of each product whose delivery starts in ``[start, end)``,
        summed per buyer and seller (metering settles delivery against them), optionally
        only those of one member (as buyer or seller)."""
        rows = await self.pool.fetch(
            "SELECT buyer, seller, product_id, delivery_start, sum(energy_wh)::bigint AS wh, "
            "sum(energy_wh::numeric * price_ticks) AS money FROM trades WHERE market_id = $1 "
            "AND delivery_start >= $2 AND delivery_start < $3 AND ($4::text IS NULL OR buyer = $4 OR seller = $4) "
            "GROUP BY buyer, seller, product_id, delivery_start ORDER BY delivery_start, buyer, seller",
            self.market_id, start, end, member)
        return [PairProduct(r["buyer"], r["seller"], r["product_id"], r["delivery_start"], int(r["wh"]),
                            int(r["money"])) for r in rows]

    # ------------------------------------------------------------------ aggregates (operator page)
    async def pairs(self, upto: int) -> list[Pair]:
        rows = await self.pool.fetch(
            "SELECT seller, buyer, sum(energy_wh)::bigint AS wh, sum(energy_wh::numeric * price_ticks) AS money, "
            "count(*)::bigint AS n FROM trades WHERE market_id = $1 AND seq <= $2 GROUP BY seller, buyer",
            self.market_id, upto)
        return [Pair(r["seller"], r["buyer"], int(r["wh"]), int(r["money"]), int(r["n"])) for r in rows]

    async def product_stats(self, upto: int) -> list[ProductStats]:
        rows = await self.pool.fetch(
            "SELECT product_id, sum(energy_wh)::bigint AS wh, count(*)::bigint AS n, "
            "(array_agg(price_ticks ORDER BY seq DESC))[1] AS last FROM trades "
            "WHERE market_id = $1 AND seq <= $2 GROUP BY product_id", self.market_id, upto)
        return [ProductStats(r["product_id"], int(r["wh"]), int(r["n"]), r["last"]) for r in rows]

    async def history(self, upto: int, per_product: int) -> list[asyncpg.Record]:
        """The last ``per_product`` trades of each product, oldest first."""
        return await self.pool.fetch(
            "SELECT product_id, ts, price_ticks, energy_wh FROM (SELECT product_id, seq, ts, price_ticks, energy_wh, "
            "row_number() OVER (PARTITION BY product_id ORDER BY seq DESC) AS rn FROM trades "
            "WHERE market_id = $1 AND seq <= $2) t WHERE rn <= $3 ORDER BY seq", self.market_id, upto, per_product)

    async def recent(self, upto: int, limit: int) -> list[asyncpg.Record]:
        """The last ``limit`` trades, newest first, with buyer and seller."""
        return await self.pool.fetch(
            "SELECT trade_id, seq, product_id, buyer, seller, energy_wh, price_ticks, ts FROM trades "
            "WHERE market_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT $3", self.market_id, upto, limit)
