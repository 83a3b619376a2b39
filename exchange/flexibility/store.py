"""PostgreSQL persistence of the flexibility gateway (tables of alembic 0004)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg

from exchange.core.units import from_us, to_us
from exchange.flexibility.core import DeliveryKind, Direction, FlexEvent, Instruction, MemberHistory, Offer
from exchange.flexibility.core.delivery import DeliveryRecord
from exchange.runtime.ports import BillItem, Payout


def _t(us: int):
    return from_us(us)


class FlexStore:
    def __init__(self, pool: asyncpg.Pool, market_id: str) -> None:
        self.pool = pool
        self.market_id = market_id

    # ------------------------------------------------------------------ loading
    async def load_offers(self) -> list[tuple[Offer, str]]:
        rows = await self.pool.fetch(
            "SELECT * FROM flex_offers WHERE market_id = $1 ORDER BY offer_id", self.market_id)
        return [(Offer(r["offer_id"], r["member"], to_us(r["period_start"]), to_us(r["period_end"]),
                       Direction(r["direction"]), r["power_w"], r["price_ticks"], DeliveryKind(r["kind"]),
                       r["energy_wh"]), r["status"]) for r in rows]

    async def load_series(self, table: str, key: str) -> dict[str, dict[int, tuple[int, int, str]]]:
        src = ", source" if table == "flex_baselines" else ", 'member' AS source"
        rows = await self.pool.fetch(f"SELECT member, {key}, consumption_wh, generation_wh{src} FROM {table} "
                                     "WHERE market_id = $1", self.market_id)
        out: dict[str, dict[int, tuple[int, int, str]]] = defaultdict(dict)
        for r in rows:
            out[r["member"]][to_us(r[key])] = (r["consumption_wh"], r["generation_wh"], r["source"])
        return out

    async def counters(self) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT (SELECT coalesce(max(offer_id), 0) FROM flex_offers WHERE market_id = $1) AS offer,"
            " (SELECT coalesce(max(event_id), 0) FROM flex_events WHERE market_id = $1) AS event,"
            " (SELECT coalesce(max(invitation_id), 0) FROM flex_invitations WHERE market_id = $1) AS invitation,"
            " (SELECT coalesce(max(bid_id), 0) FROM flex_bids WHERE market_id = $1) AS bid,"
            " (SELECT coalesce(max(instruction_id), 0) FROM flex_activations WHERE market_id = $1) AS instruction,"
            " (SELECT coalesce(max(payout_id), 0) FROM flex_payouts WHERE market_id = $1) AS payout",
            self.market_id)
        return dict(row)

    async def history(self) -> dict[str, MemberHistory]:
        out: dict[str, MemberHistory] = defaultdict(MemberHistory)
        for r in await self.pool.fetch("SELECT member, count(*) AS n FROM flex_invitations WHERE market_id = $1 "
                                       "GROUP BY member", self.market_id):
            out[r["member"]].invitations = r["n"]
        for r in await self.pool.fetch(
                "SELECT member, count(*) FILTER (WHERE delivered_wh > 0) AS n, sum(greatest(delivered_wh, 0)) AS d "
                "FROM flex_shares WHERE market_id = $1 GROUP BY member", self.market_id):
            out[r["member"]].participations = r["n"]
            out[r["member"]].delivered_wh = int(r["d"] or 0)
        return dict(out)

    async def interrupt_open_events(self) -> int:
        """Events left open by a previous process are not resumed (see docs/flexibility.md)."""
        res = await self.pool.execute(
            "UPDATE flex_events SET phase = 'interrupted', reason = 'the service restarted during the event', "
            "updated_at = now() WHERE market_id = $1 AND phase IN ('inviting','bidding','delivering')", self.market_id)
        return int(res.split()[-1])

    # ------------------------------------------------------------------ member side
    async def save_offer(self, o: Offer, status: str = "open") -> None:
        await self.pool.execute(
            "INSERT INTO flex_offers (market_id, offer_id, member, period_start, period_end, direction, power_w, "
            "energy_wh, price_ticks, kind, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT (market_id, offer_id) DO UPDATE SET status = EXCLUDED.status",
            self.market_id, o.offer_id, o.member, _t(o.period_start), _t(o.period_end), o.direction.value, o.power_w,
            o.energy_wh, o.price, o.kind.value, status)

    async def save_series(self, table: str, key: str, member: str, rows: list[tuple[int, int, int]],
                          source: str = "member") -> None:
        args: list[tuple[Any, ...]]
        if table == "flex_baselines":
            sql = ("INSERT INTO flex_baselines (market_id, member, slot_start, consumption_wh, generation_wh, source) "
                   "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (market_id, member, slot_start) DO UPDATE SET "
                   "consumption_wh = EXCLUDED.consumption_wh, generation_wh = EXCLUDED.generation_wh, "
                   "source = EXCLUDED.source, updated_at = now()")
            args = [(self.market_id, member, _t(t), c, g, source) for t, c, g in rows]
        else:
            sql = ("INSERT INTO flex_meter (market_id, member, interval_start, consumption_wh, generation_wh) "
                   "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (market_id, member, interval_start) DO UPDATE SET "
                   "consumption_wh = EXCLUDED.consumption_wh, generation_wh = EXCLUDED.generation_wh, updated_at = now()")
            args = [(self.market_id, member, _t(t), c, g) for t, c, g in rows]
        await self.pool.executemany(sql, args)

    # ------------------------------------------------------------------ events
    async def save_event(self, ev: FlexEvent, viability: dict | None = None) -> None:
        alloc = ev.allocation.to_dict() if ev.allocation is not None else {}
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO flex_events (market_id, event_id, period_start, period_end, direction, origin, phase, "
                "reason, target_w, viability, allocation, gross_units, penalty_units, shortfall_wh) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,coalesce($10, '{}'::jsonb),$11,$12,$13,$14) "
                "ON CONFLICT (market_id, event_id) DO UPDATE SET phase = EXCLUDED.phase, reason = EXCLUDED.reason, "
                "viability = CASE WHEN $10::jsonb IS NULL THEN flex_events.viability ELSE EXCLUDED.viability END, "
                "allocation = EXCLUDED.allocation, gross_units = EXCLUDED.gross_units, "
                "penalty_units = EXCLUDED.penalty_units, shortfall_wh = EXCLUDED.shortfall_wh, updated_at = now()",
                self.market_id, ev.event_id, _t(ev.period_start), _t(ev.period_end), ev.direction.value, ev.origin,
                ev.phase, ev.reason, ev.target_w, viability, alloc, ev.gross, ev.penalty, ev.shortfall_wh)
            if ev.invitations:
                await conn.executemany(
                    "INSERT INTO flex_invitations (market_id, invitation_id, event_id, member, offer_id, rank, score, "
                    "reserve, status, invited_at, respond_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
                    "ON CONFLICT (market_id, invitation_id) DO UPDATE SET status = EXCLUDED.status",
                    [(self.market_id, i.invitation_id, ev.event_id, i.member, i.offer_id, i.rank, i.score, i.reserve,
                      i.status, _t(i.invited_at), _t(i.respond_by)) for i in ev.invitations.values()])
            if ev.allocation is not None and ev.allocation.bids:
                acts = {a.bid_id: a for a in ev.activations}
                await conn.executemany(
                    "INSERT INTO flex_bids (market_id, bid_id, event_id, product, direction, volume_w, price_ticks, "
                    "validity_start, validity_end, divisible, portions, status, activated_w, activation_price_ticks) "
                    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) ON CONFLICT (market_id, bid_id) DO UPDATE "
                    "SET status = EXCLUDED.status, activated_w = EXCLUDED.activated_w, "
                    "activation_price_ticks = EXCLUDED.activation_price_ticks",
                    [(self.market_id, b.bid_id, ev.event_id, b.product, b.direction.value, b.volume_w, b.price,
                      _t(b.validity_start), _t(b.validity_end), b.divisible, b.to_dict()["portions"],
                      ev.bid_status.get(b.bid_id, "built"), acts[b.bid_id].activated_w if b.bid_id in acts else 0,
                      acts[b.bid_id].price if b.bid_id in acts else None) for b in ev.allocation.bids])

    async def save_instructions(self, event_id: int, rows: list[tuple[int, Instruction]]) -> None:
        await self.pool.executemany(
            "INSERT INTO flex_activations (market_id, instruction_id, event_id, member, offer_id, bid_id, power_w, "
            "start_at, end_at, energy_wh, reserve) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT DO NOTHING",
            [(self.market_id, n, event_id, i.member, i.offer_id, i.bid_id, i.power_w, _t(i.start), _t(i.end),
              i.energy_wh, i.reserve) for n, i in rows])

    async def save_delivery(self, event_id: int, recs: list[DeliveryRecord]) -> None:
        await self.pool.executemany(
            "INSERT INTO flex_delivery (market_id, event_id, member, interval_start, interval_end, required_wh, "
            "baseline_wh, metered_wh, delivered_wh, shortfall_wh, over_wh) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT DO NOTHING",
            [(self.market_id, event_id, r.member, _t(r.interval_start), _t(r.interval_end), r.required_wh,
              r.baseline_wh, r.metered_wh, r.delivered_wh, r.shortfall_wh, r.over_wh) for r in recs])

    async def save_settlement(self, ev: FlexEvent, first_payout_id: int) -> list[tuple[int, str, int]]:
        """Shares and payouts in one transaction. Returns (payout_id, member, amount)."""
        payouts = []
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_event_conn(conn, ev)
            await conn.executemany(
                "INSERT INTO flex_shares (market_id, event_id, member, rule, delivered_wh, weight, share_units, "
                "penalty_units, payout_units) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING",
                [(self.market_id, ev.event_id, s.member, ev.config.share_rule.value, s.delivered_wh, s.weight,
                  s.share, s.penalty, s.payout) for s in ev.shares])
            n = first_payout_id
            for s in ev.shares:
                if s.payout != 0:
                    payouts.append((n, s.member, s.payout))
                    n += 1
            await conn.executemany(
                "INSERT INTO flex_payouts (market_id, payout_id, event_id, member, amount_units) "
                "VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
                [(self.market_id, pid, ev.event_id, m, amt) for pid, m, amt in payouts])
        return payouts

    async def _save_event_conn(self, conn, ev: FlexEvent) -> None:
        await conn.execute(
            "UPDATE flex_events SET phase = $3, reason = $4, gross_units = $5, penalty_units = $6, shortfall_wh = $7, "
            "updated_at = now() WHERE market_id = $1 AND event_id = $2",
            self.market_id, ev.event_id, ev.phase, ev.reason, ev.gross, ev.penalty, ev.shortfall_wh)

    # ------------------------------------------------------------------ payouts (the settlement contract)
    async def payouts(self) -> list[dict]:
        """Every payout of the market with its settlement status (operator view)."""
        rows = await self.pool.fetch(
            "SELECT payout_id, event_id, member, amount_units, status, batch_id FROM flex_payouts "
            "WHERE market_id = $1 ORDER BY payout_id", self.market_id)
        return [dict(r) for r in rows]

    async def bill_items(self, start_us: int, end_us: int) -> list[BillItem]:
        """Members' revenue shares and penalties of the events whose period starts in
        ``[start_us, end_us)`` (a BillItemSource: they appear on members' bills)."""
        rows = await self.pool.fetch(
            "SELECT p.member, sum(greatest(p.amount_units, 0))::bigint AS paid, "
            "sum(least(p.amount_units, 0))::bigint AS charged, count(DISTINCT p.event_id) AS events "
            "FROM flex_payouts p JOIN flex_events e ON e.market_id = p.market_id AND e.event_id = p.event_id "
            "WHERE p.market_id = $1 AND e.period_start >= $2 AND e.period_start < $3 GROUP BY p.member "
            "ORDER BY p.member", self.market_id, _t(start_us), _t(end_us))
        out: list[BillItem] = []
        for r in rows:
            if r["paid"]:
                out.append(BillItem(member=r["member"], name="flexibility_payout", amount_units=int(r["paid"]),
                                    detail=f"demand response, {r['events']} event(s); paid on chain"))
            if r["charged"]:
                out.append(BillItem(member=r["member"], name="flexibility_penalty", amount_units=int(r["charged"]),
                                    detail="delivery shortfall in demand-response events; charged on chain"))
        return out

    async def pending_payouts(self) -> list[Payout]:
        rows = await self.pool.fetch("SELECT payout_id, event_id, member, amount_units FROM flex_payouts "
                                     "WHERE market_id = $1 AND status = 'pending' ORDER BY event_id, payout_id", self.market_id)
        return [Payout(payout_id=r["payout_id"], event_id=r["event_id"], member=r["member"],
                       amount_units=r["amount_units"]) for r in rows]

    async def mark_settled(self, payout_ids: list[int], batch_id: int) -> int:
        res = await self.pool.execute(
            "UPDATE flex_payouts SET status = 'settled', batch_id = $3, settled_at = now() "
            "WHERE market_id = $1 AND payout_id = ANY($2::bigint[]) AND status = 'pending'",
            self.market_id, payout_ids, batch_id)
        return int(res.split()[-1])
