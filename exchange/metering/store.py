"""The metering subsystem's tables (migrations/m001_metering.py) and nothing else's: the
only module that reads or writes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exchange.core.units import UTC, from_us, to_us
from exchange.metering.core.model import MeterPoint, PointKind
from exchange.metering.readings import MISSING, ParsedReadings
from exchange.runtime.ports import Payout

DAY_US = 86_400_000_000
#: one advisory lock key space for the metering writers of a market (imports, corrections)
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('voltbourse.metering:' || $1))"


_NOT_A_SIGNER = "the signer is not the member nor a device key it registered"


@dataclass(frozen=True, slots=True)
class ImportResult:
    upload_id: int
    rows: int
    new_values: int
    corrected: int
    unchanged: int
    already_imported: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"upload_id": self.upload_id, "rows": self.rows, "new_values": self.new_values,
                "corrected": self.corrected, "unchanged": self.unchanged,
                "already_imported": self.already_imported}


def _ts(us: int) -> datetime:
    return from_us(us)


class MeteringStore:
    def __init__(self, pool: asyncpg.Pool, market_id: str) -> None:
        self.pool = pool
        self.market_id = market_id

    # ------------------------------------------------------------------ points
    async def add_points(self, points: Sequence[MeterPoint]) -> tuple[int, list[str]]:
        """Register points; an existing point with the same member and kind is kept as is.
        Returns (how many are new, the ids that exist with another member or kind)."""
        async with self.pool.acquire() as conn, conn.transaction():
            existing = {r["point_id"]: (r["member"], r["kind"]) for r in await conn.fetch(
                "SELECT point_id, member, kind FROM meter_points WHERE market_id = $1 AND point_id = ANY($2::text[])",
                self.market_id, [p.point_id for p in points])}
            clash = [p.point_id for p in points if p.point_id in existing
                     and existing[p.point_id] != (p.member, p.kind.value)]
            if clash:
                return 0, clash
            new = [p for p in points if p.point_id not in existing]
            await conn.executemany(
                "INSERT INTO meter_points (market_id, point_id, member, kind) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING", [(self.market_id, p.point_id, p.member, p.kind.value) for p in new])
            return len(new), []

    async def points(self, member: str | None = None) -> list[MeterPoint]:
        rows = await self.pool.fetch(
            "SELECT point_id, member, kind FROM meter_points WHERE market_id = $1 AND ($2::text IS NULL OR member = $2) "
            "ORDER BY point_id", self.market_id, member)
        return [MeterPoint(r["point_id"], r["member"], PointKind(r["kind"])) for r in rows]

    # ------------------------------------------------------------------ readings
    async def upload_by_digest(self, digest: str) -> ImportResult | None:
        r = await self.pool.fetchrow(
            "SELECT upload_id, rows, new_values, corrected, unchanged FROM meter_uploads "
            "WHERE market_id = $1 AND digest = $2 ORDER BY upload_id DESC LIMIT 1", self.market_id, digest)
        if r is None:
            return None
        return ImportResult(r["upload_id"], r["rows"], r["new_values"], r["corrected"], r["unchanged"], True)

    async def import_readings(self, parsed: ParsedReadings, *, digest: str, filename: str, fmt: str,
                              source: str, report: dict[str, Any]) -> ImportResult:
        """Merge ``parsed`` into the stored readings in one transaction: a value where none
        was is new; a different value replaces the stored one and is recorded in
        ``meter_corrections``; an equal one changes nothing. Nothing is written if any
        statement fails."""
        # a generator: one day's list alive at a time (a year of a large community is tens of
        # millions of values)
        records = ((pid, _ts(day), values.tolist()) for (pid, day), values in parsed.days.items())
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_SQL, self.market_id)
            await conn.execute("CREATE TEMP TABLE meter_in (point_id text, day timestamptz, energy_wh bigint[]) "
                               "ON COMMIT DROP")
            await conn.copy_records_to_table("meter_in", records=records)
            await conn.execute(f"UPDATE meter_in SET energy_wh = array_replace(energy_wh, {MISSING}, NULL)")
            await conn.execute("ANALYZE meter_in")
            counts = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE o IS NULL AND n IS NOT NULL) AS new_values, "
                " count(*) FILTER (WHERE o IS NOT NULL AND n IS NOT NULL AND o <> n) AS corrected, "
                " count(*) FILTER (WHERE o IS NOT NULL AND n = o) AS unchanged "
                "FROM meter_in i LEFT JOIN meter_days d ON d.market_id = $1 AND d.point_id = i.point_id "
                "AND d.day = i.day, LATERAL unnest(i.energy_wh, d.energy_wh) AS u(n, o)", self.market_id)
            upload_id = await conn.fetchval(
                "INSERT INTO meter_uploads (market_id, digest, filename, format, rows, new_values, corrected, "
                "unchanged, report) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING upload_id",
                self.market_id, digest, filename[:200], fmt, parsed.rows, counts["new_values"], counts["corrected"],
                counts["unchanged"], report)
            if counts["corrected"]:
                step_s = parsed.interval_minutes * 60
                await conn.execute(
                    "INSERT INTO meter_corrections (market_id, point_id, interval_start, old_wh, new_wh, source, "
                    "upload_id) SELECT $1, i.point_id, i.day + ((u.k - 1) * $2) * interval '1 second', u.o, u.n, $3, $4 "
                    "FROM meter_in i JOIN meter_days d ON d.market_id = $1 AND d.point_id = i.point_id "
                    "AND d.day = i.day, LATERAL unnest(i.energy_wh, d.energy_wh) WITH ORDINALITY AS u(n, o, k) "
                    "WHERE u.n IS NOT NULL AND u.o IS NOT NULL AND u.n <> u.o", self.market_id, step_s, source,
                    upload_id)
            await conn.execute(
                "INSERT INTO meter_days (market_id, point_id, day, energy_wh) "
                "SELECT $1, point_id, day, energy_wh FROM meter_in "
                "ON CONFLICT (market_id, point_id, day) DO UPDATE SET energy_wh = "
                "ARRAY(SELECT coalesce(u.n, u.o) FROM unnest(EXCLUDED.energy_wh, meter_days.energy_wh) "
                "WITH ORDINALITY AS u(n, o, k) ORDER BY u.k)", self.market_id)
        return ImportResult(upload_id, parsed.rows, counts["new_values"], counts["corrected"], counts["unchanged"])

    async def uploads(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT upload_id, digest, filename, format, rows, new_values, corrected, unchanged, report, at "
            "FROM meter_uploads WHERE market_id = $1 ORDER BY upload_id DESC LIMIT $2", self.market_id, limit)
        return [{**dict(r), "at": r["at"].astimezone(UTC).isoformat().replace("+00:00", "Z")} for r in rows]

    async def corrections(self, point_id: str | None, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT correction_id, point_id, interval_start, old_wh, new_wh, source, upload_id, at "
            "FROM meter_corrections WHERE market_id = $1 AND ($2::text IS NULL OR point_id = $2) "
            "ORDER BY correction_id DESC LIMIT $3", self.market_id, point_id, limit)
        return [dict(r) for r in rows]

    async def point_days(self, point_ids: Sequence[str], start_us: int, end_us: int) -> list[asyncpg.Record]:
        """(point_id, day, energy_wh[]) of the days overlapping ``[start, end)``."""
        first_day = start_us - start_us % DAY_US
        return await self.pool.fetch(
            "SELECT point_id, day, energy_wh FROM meter_days WHERE market_id = $1 AND point_id = ANY($2::text[]) "
            "AND day >= $3 AND day < $4 ORDER BY point_id, day", self.market_id, list(point_ids), _ts(first_day),
            _ts(end_us))

    # ------------------------------------------------------------------ device keys (REST pushes)
    async def register_device(self, member: str, device: str, label: str) -> None:
        await self.pool.execute(
            "INSERT INTO meter_devices (market_id, device, member, label) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (market_id, device, member) DO UPDATE SET label = EXCLUDED.label, revoked = false",
            self.market_id, device, member, label)

    async def revoke_device(self, member: str, device: str) -> bool:
        """Revoke a device key the member registered (its own address is no device: False)."""
        if device == member:
            return False
        return (await self.pool.execute(
            "UPDATE meter_devices SET revoked = true WHERE market_id = $1 AND device = $2 AND member = $3 "
            "AND NOT revoked", self.market_id, device, member)) != "UPDATE 0"

    async def devices(self, member: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT device, label, last_nonce, revoked, created_at FROM meter_devices WHERE market_id = $1 "
            "AND member = $2 AND device <> member ORDER BY created_at", self.market_id, member)
        return [dict(r) for r in rows]

    async def may_push(self, member: str, signer: str) -> str | None:
        """Why ``signer`` may not push ``member``'s readings (None: it may): the member's own
        key always may; another key only as a device the member registered and did not revoke.
        Reads only (the nonce is used by :meth:`use_nonce`, once the push is valid)."""
        if signer == member:
            return None
        revoked = await self.pool.fetchval(
            "SELECT revoked FROM meter_devices WHERE market_id = $1 AND device = $2 AND member = $3",
            self.market_id, signer, member)
        return _NOT_A_SIGNER if revoked is None or revoked else None

    async def use_nonce(self, member: str, signer: str, nonce: int) -> str | None:
        """Accept ``nonce`` for a push signed by ``signer`` for ``member``: the member itself or
        a device it registered (not revoked), and a nonce above the signer's last one. Returns
        None when accepted, else the reason."""
        async with self.pool.acquire() as conn, conn.transaction():
            if signer == member:
                await conn.execute(
                    "INSERT INTO meter_devices (market_id, device, member, label) VALUES ($1, $2, $2, 'member key') "
                    "ON CONFLICT DO NOTHING", self.market_id, member)
            row = await conn.fetchrow(
                "SELECT last_nonce, revoked FROM meter_devices WHERE market_id = $1 AND device = $2 AND member = $3 "
                "FOR UPDATE", self.market_id, signer, member)
            if row is None or (row["revoked"] and signer != member):  # the member's own key is never revoked
                return _NOT_A_SIGNER
            if nonce <= row["last_nonce"]:
                return f"nonce {nonce} is not above the last one used ({row['last_nonce']})"
            await conn.execute("UPDATE meter_devices SET last_nonce = $4 WHERE market_id = $1 AND device = $2 "
                               "AND member = $3", self.market_id, signer, member, nonce)
            return None

    # ------------------------------------------------------------------ tariffs, fees, intensity
    async def put_tariff(self, tariff_id: str, name: str, prices: Sequence[tuple[int, int, int]]) -> int:
        """Create or update a tariff and upsert its prices ``(valid_from_us, import, feed_in)``."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO tariffs (market_id, tariff_id, name) VALUES ($1, $2, $3) "
                "ON CONFLICT (market_id, tariff_id) DO UPDATE SET name = EXCLUDED.name", self.market_id, tariff_id,
                name)
            await conn.executemany(
                "INSERT INTO tariff_prices (market_id, tariff_id, valid_from, import_ticks, feed_in_ticks) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (market_id, tariff_id, valid_from) DO UPDATE SET "
                "import_ticks = EXCLUDED.import_ticks, feed_in_ticks = EXCLUDED.feed_in_ticks",
                [(self.market_id, tariff_id, _ts(t), i, f) for t, i, f in prices])
        return len(prices)

    async def tariffs(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT t.tariff_id, t.name, count(p.valid_from) AS prices, min(p.valid_from) AS first, "
            "max(p.valid_from) AS last FROM tariffs t LEFT JOIN tariff_prices p USING (market_id, tariff_id) "
            "WHERE t.market_id = $1 GROUP BY t.tariff_id, t.name ORDER BY t.tariff_id", self.market_id)
        return [dict(r) for r in rows]

    async def has_tariff(self, tariff_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT 1 FROM tariffs WHERE market_id = $1 AND tariff_id = $2", self.market_id, tariff_id))

    async def tariff_prices(self, tariff_id: str, start_us: int, end_us: int) -> list[tuple[int, int, int]]:
        """The prices in force during ``[start, end)``: the last change at or before
        ``start`` and every later one before ``end``."""
        rows = await self.pool.fetch(
            "(SELECT valid_from, import_ticks, feed_in_ticks FROM tariff_prices WHERE market_id = $1 AND tariff_id = $2 "
            " AND valid_from <= $3 ORDER BY valid_from DESC LIMIT 1) UNION ALL "
            "(SELECT valid_from, import_ticks, feed_in_ticks FROM tariff_prices WHERE market_id = $1 AND tariff_id = $2 "
            " AND valid_from > $3 AND valid_from < $4) ORDER BY valid_from", self.market_id, tariff_id, _ts(start_us),
            _ts(end_us))
        return [(to_us(r["valid_from"]), r["import_ticks"], r["feed_in_ticks"]) for r in rows]

    async def assign_tariff(self, member: str, effective_from_us: int, tariff_id: str, contracted_power_w: int) -> None:
        await self.pool.execute(
            "INSERT INTO member_tariffs (market_id, member, effective_from, tariff_id, contracted_power_w) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (market_id, member, effective_from) DO UPDATE SET "
            "tariff_id = EXCLUDED.tariff_id, contracted_power_w = EXCLUDED.contracted_power_w",
            self.market_id, member, _ts(effective_from_us), tariff_id, contracted_power_w)

    async def member_tariffs(self, member: str | None = None) -> list[tuple[str, int, str, int]]:
        """(member, effective_from_us, tariff_id, contracted_power_w), by member then time."""
        rows = await self.pool.fetch(
            "SELECT member, effective_from, tariff_id, contracted_power_w FROM member_tariffs WHERE market_id = $1 "
            "AND ($2::text IS NULL OR member = $2) ORDER BY member, effective_from", self.market_id, member)
        return [(r["member"], to_us(r["effective_from"]), r["tariff_id"], r["contracted_power_w"]) for r in rows]

    async def put_fee_schedule(self, effective_from_us: int, schedule: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO fee_schedules (market_id, effective_from, schedule) VALUES ($1, $2, $3) "
            "ON CONFLICT (market_id, effective_from) DO UPDATE SET schedule = EXCLUDED.schedule",
            self.market_id, _ts(effective_from_us), schedule)

    async def fee_schedules(self) -> list[tuple[int, dict[str, Any]]]:
        rows = await self.pool.fetch("SELECT effective_from, schedule FROM fee_schedules WHERE market_id = $1 "
                                     "ORDER BY effective_from", self.market_id)
        return [(to_us(r["effective_from"]), r["schedule"]) for r in rows]

    async def put_intensity(self, values: Sequence[tuple[int, int]]) -> None:
        await self.pool.executemany(
            "INSERT INTO grid_intensity (market_id, valid_from, g_per_kwh) VALUES ($1, $2, $3) "
            "ON CONFLICT (market_id, valid_from) DO UPDATE SET g_per_kwh = EXCLUDED.g_per_kwh",
            [(self.market_id, _ts(t), g) for t, g in values])

    async def intensity(self, start_us: int, end_us: int) -> list[tuple[int, int]]:
        rows = await self.pool.fetch(
            "(SELECT valid_from, g_per_kwh FROM grid_intensity WHERE market_id = $1 AND valid_from <= $2 "
            " ORDER BY valid_from DESC LIMIT 1) UNION ALL (SELECT valid_from, g_per_kwh FROM grid_intensity "
            " WHERE market_id = $1 AND valid_from > $2 AND valid_from < $3) ORDER BY valid_from",
            self.market_id, _ts(start_us), _ts(end_us))
        return [(to_us(r["valid_from"]), r["g_per_kwh"]) for r in rows]

    # ------------------------------------------------------------------ bills
    async def issue_bill(self, member: str, start_us: int, end_us: int, digest: str, total_units: int,
                         community_units: int, bill: dict[str, Any],
                         event_id: int | None = None) -> tuple[int, bool, dict[str, Any] | None]:
        """Store ``bill`` as a new version unless the latest has the same digest. Returns
        (version, whether it is new, the previous version's bill or None). With ``event_id``,
        the change of what the member owes the community is recorded in the same
        transaction as a payout for settlement (negative: the member pays)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_SQL, self.market_id)
            prev = await conn.fetchrow(
                "SELECT version, digest, bill FROM bills WHERE market_id = $1 AND member = $2 AND period_start = $3 "
                "AND period_end = $4 ORDER BY version DESC LIMIT 1", self.market_id, member, _ts(start_us),
                _ts(end_us))
            if prev is not None and prev["digest"] == digest:
                return prev["version"], False, None
            version = 1 if prev is None else prev["version"] + 1
            await conn.execute(
                "INSERT INTO bills (market_id, member, period_start, period_end, version, digest, total_units, "
                "community_units, bill) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", self.market_id, member,
                _ts(start_us), _ts(end_us), version, digest, total_units, community_units, bill)
            before = int(prev["bill"]["community_units"]["units"]) if prev is not None else 0
            if event_id is not None and community_units != before:
                await conn.execute(
                    "INSERT INTO bill_payouts (market_id, event_id, member, period_start, period_end, version, "
                    "amount_units) VALUES ($1, $2, $3, $4, $5, $6, $7)", self.market_id, event_id, member,
                    _ts(start_us), _ts(end_us), version, before - community_units)
            return version, True, (prev["bill"] if prev is not None else None)

    async def overlapping_bill_periods(self, start_us: int, end_us: int) -> list[tuple[int, int]]:
        """Periods of issued bills that overlap ``[start_us, end_us)`` without being it."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT period_start, period_end FROM bills WHERE market_id = $1 AND period_start < $3 "
            "AND period_end > $2 AND NOT (period_start = $2 AND period_end = $3) ORDER BY period_start LIMIT 5",
            self.market_id, _ts(start_us), _ts(end_us))
        return [(to_us(r["period_start"]), to_us(r["period_end"])) for r in rows]

    async def next_run(self) -> int:
        return int(await self.pool.fetchval("SELECT nextval('bill_runs')"))

    # ------------------------------------------------------------------ settlement of community charges (a PayoutSource)
    async def pending_payouts(self) -> list[Payout]:
        rows = await self.pool.fetch(
            "SELECT payout_id, event_id, member, amount_units FROM bill_payouts WHERE market_id = $1 "
            "AND settled_batch IS NULL ORDER BY event_id, payout_id", self.market_id)
        return [Payout(payout_id=r["payout_id"], event_id=r["event_id"], member=r["member"],
                       amount_units=int(r["amount_units"])) for r in rows]

    async def mark_settled(self, payout_ids: list[int], batch_id: int) -> int:
        done = await self.pool.execute(
            "UPDATE bill_payouts SET settled_batch = $3 WHERE market_id = $1 AND payout_id = ANY($2::bigint[]) "
            "AND settled_batch IS NULL", self.market_id, payout_ids, batch_id)
        return int(done.split()[-1])

    async def payouts(self, member: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT payout_id, event_id, member, period_start, period_end, version, amount_units, settled_batch, "
            "created_at FROM bill_payouts WHERE market_id = $1 AND ($2::text IS NULL OR member = $2) "
            "ORDER BY payout_id", self.market_id, member)
        return [dict(r) for r in rows]

    async def bills(self, member: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (member, period_start, period_end) member, period_start, period_end, version, digest, "
            "total_units, community_units, created_at FROM bills WHERE market_id = $1 AND ($2::text IS NULL OR "
            "member = $2) ORDER BY member, period_start, period_end, version DESC LIMIT $3", self.market_id, member,
            limit)
        return [dict(r) for r in rows]

    async def bill_versions(self, member: str, start_us: int, end_us: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT version, digest, bill, created_at FROM bills WHERE market_id = $1 AND member = $2 AND "
            "period_start = $3 AND period_end = $4 ORDER BY version", self.market_id, member, _ts(start_us),
            _ts(end_us))
        return [dict(r) for r in rows]


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
