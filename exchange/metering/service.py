"""The metering service: readings in (uploads, live pushes), tariffs and fees, delivery
settlement, bills and KPIs. The I/O edge around the pure core (exchange.metering.core):
it loads what a period needs from the database, calls the core, stores bills."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from exchange.core.calendar import is_product_edge, product_edge_at_or_before
from exchange.core.units import US_PER_MIN, eur, eur_cents_half_even, from_us, iso, to_us
from exchange.metering.core.bill import Bill, Line, bill
from exchange.metering.core.forecast import expected, history_span
from exchange.metering.core.kpi import Kpi, community_kpi, member_kpi
from exchange.metering.core.model import FeeSchedule, Grid, MemberSeries, MeterPoint
from exchange.metering.core.series import estimate, positions_on_grid, step_series
from exchange.metering.core.settle import Flows, Imbalanced, check_balance, settle_member
from exchange.metering.fees import schedule_from_json
from exchange.metering.readings import ParsedReadings, RowError, UploadRefused, parse_csv, parse_rows, parse_xlsx
from exchange.metering.store import ImportResult, MeteringStore, canonical
from exchange.protocol.errors import VoltbourseError, register
from exchange.runtime.ports import BillItemSource, Outlook
from exchange.runtime.trades import TradeStore

log = logging.getLogger(__name__)

OWNER = "metering"
INVALID_UPLOAD = register("INVALID_UPLOAD", 422, "a readings file has errors (each with line, column and reason); "
                                                 "nothing was imported", OWNER)
UPLOAD_TOO_LARGE = register("UPLOAD_TOO_LARGE", 413, "the upload exceeds metering_upload_max_mb", OWNER)
POINT_CONFLICT = register("POINT_CONFLICT", 409, "a metering point id is registered with another member or kind",
                          OWNER)
NOT_YOUR_POINT = register("NOT_YOUR_POINT", 403, "not one of the member's metering points (another member's, "
                          "or none: the answer does not tell which)", OWNER)
NO_TARIFF = register("NO_TARIFF", 409, "a member has no tariff (and the default tariff does not exist) or a tariff "
                                       "has no price for part of the period", OWNER)
UNKNOWN_TARIFF = register("UNKNOWN_TARIFF", 404, "no such tariff", OWNER)
INVALID_PERIOD = register("INVALID_BILLING_PERIOD", 422, "a period must be whole metering intervals, end after start, "
                                                 "and at most 366 days long", OWNER)
NO_BILL = register("NO_BILL", 404, "no bill issued for this member and period", OWNER)
BILL_PERIOD_OVERLAP = register("BILL_PERIOD_OVERLAP", 409, "bills were issued for a period that overlaps this one "
                               "without being it: each interval is billed (and charged) in one period only; a bill "
                               "run for the same period again is a correction", OWNER)
NO_FEES = register("NO_FEES", 409, "no fee schedule in force at the start of the period", OWNER)

def upload_error(exc: UploadRefused) -> VoltbourseError:
    """A refused file as the API's error: every problem (line, column, reason) and their count."""
    return VoltbourseError(INVALID_UPLOAD, str(exc), errors=[e.as_dict() for e in exc.errors],
                           error_count=exc.error_count)


WEEK_US = 7 * 86_400_000_000
#: payout event ids on chain are one space for every payout source (the registry refuses an
#: id twice): metering's bill runs use 2^56 + n, flexibility's events stay far below
METERING_EVENT_BASE = 1 << 56
MAX_PERIOD_US = 366 * 86_400_000_000


@dataclass
class Settled:
    """A period settled for every member: series, flows and what they were computed with."""

    grid: Grid
    series: dict[str, MemberSeries]
    flows: dict[str, Flows]
    fees: FeeSchedule
    contracted_w: dict[str, int]
    tariff_of: dict[str, str]


def money_json(units: int) -> dict[str, Any]:
    """Money in a response: exact units (1e-8 EUR, a string: may exceed 2^53) and euros."""
    return {"units": str(units), "eur": f"{eur(units):.8f}"}  # plain digits: str() gave 0E-8 for zero


class MeteringService:
    def __init__(self, store: MeteringStore, trades: TradeStore, *, interval_minutes: int, tz: ZoneInfo,
                 product_minutes: int, default_tariff: str = "default") -> None:
        if product_minutes % interval_minutes:
            raise ValueError(f"products of {product_minutes} min are not whole {interval_minutes}-min metering "
                             "intervals (set metering_interval_minutes to a divisor)")
        self.store = store
        self.trades = trades
        self.interval_minutes = interval_minutes
        self.step_us = interval_minutes * US_PER_MIN
        self.product_minutes = product_minutes
        self.tz = tz
        self.default_tariff = default_tariff
        #: other subsystems' lines on members' bills (flexibility's payouts and penalties)
        self.bill_item_sources: list[BillItemSource] = []
        self._lock = asyncio.Lock()
        #: called after readings were imported or bills issued (the operator page's panel)
        self.on_change: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ points and readings
    async def add_points(self, points: Sequence[MeterPoint]) -> int:
        new, clash = await self.store.add_points(points)
        if clash:
            raise VoltbourseError(POINT_CONFLICT, f"already registered with another member or kind: {clash[:10]}")
        return new

    async def import_file(self, data: bytes, filename: str, *, now_us: int | None, source: str = "upload") -> dict:
        """Validate and import a CSV or xlsx file (by content: an xlsx is a zip archive).
        The same file again is answered with its first import's result."""
        digest = hashlib.sha256(data).hexdigest()
        known = await self.store.upload_by_digest(digest)
        if known is not None:
            return {**known.as_dict(), "digest": digest}
        fmt = "xlsx" if data[:2] == b"PK" else "csv"
        points = {p.point_id for p in await self.store.points()}
        parse = parse_xlsx if fmt == "xlsx" else parse_csv
        try:
            parsed = await asyncio.to_thread(parse, data, points, self.interval_minutes, not_after_us=now_us)
        except UploadRefused as exc:
            raise upload_error(exc) from None
        return await self._import(parsed, digest, filename, fmt, source)

    async def import_path(self, path: Path, *, now_us: int | None, source: str = "file") -> dict:
        """:meth:`import_file` for a file on disk, streamed (never read into memory whole)."""
        h = hashlib.sha256()
        with path.open("rb") as f:
            head = f.read(2)
            h.update(head)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        known = await self.store.upload_by_digest(digest)
        if known is not None:
            return {**known.as_dict(), "digest": digest}
        if head == b"PK":
            return await self.import_file(path.read_bytes(), path.name, now_us=now_us, source=source)
        points = {p.point_id for p in await self.store.points()}

        def parse() -> ParsedReadings:
            with path.open("rb") as f:
                return parse_csv(f, points, self.interval_minutes, not_after_us=now_us)

        try:
            parsed = await asyncio.to_thread(parse)
        except UploadRefused as exc:
            raise upload_error(exc) from None
        return await self._import(parsed, digest, path.name, "csv", source)

    async def _import(self, parsed: ParsedReadings, digest: str, filename: str, fmt: str, source: str) -> dict:
        gaps = parsed.gaps()
        report = {"gaps": {k: gaps[k] for k in sorted(gaps)[:100]}, "points_with_gaps": len(gaps),
                  "points": len(parsed.first_us),
                  "first": iso(min(parsed.first_us.values())), "last": iso(max(parsed.last_us.values()))}
        result: ImportResult = await self.store.import_readings(parsed, digest=digest, filename=filename, fmt=fmt,
                                                                source=source, report=report)
        self.on_change()
        return {**result.as_dict(), "digest": digest, **report}

    async def check_push(self, member: str, readings: Sequence[tuple[str, int, int]], *,
                         now_us: int | None) -> ParsedReadings:
        """Validate readings ``(point_id, interval_start_us, energy_wh)`` a member pushes for
        its own points, by the rules of an upload. Changes nothing."""
        mine = {p.point_id for p in await self.store.points(member)}
        foreign = sorted({pid for pid, _, _ in readings if pid not in mine})
        if foreign:  # another member's point or none at all: one answer, which tells nobody which points exist
            raise VoltbourseError(NOT_YOUR_POINT, f"not your metering point(s): {[f[:64] for f in foreign[:10]]}")
        rows: list[tuple[object, ...]] = [("point_id", "interval_start", "energy_wh")]
        rows.extend((pid, iso(t), e) for pid, t, e in readings)
        try:
            return parse_rows(rows, mine, self.interval_minutes, not_after_us=now_us)
        except UploadRefused as exc:
            raise upload_error(exc) from None

    async def push_readings(self, member: str, readings: Sequence[tuple[str, int, int]], *, now_us: int | None,
                            source: str) -> dict:
        """A member's gateway pushes readings of its own points; validated like a file
        (:meth:`check_push`), imported the same way (a differing value is a correction)."""
        parsed = await self.check_push(member, readings, now_us=now_us)
        digest = hashlib.sha256(canonical([member, [list(r) for r in readings]])).hexdigest()
        return await self._import(parsed, digest, f"push:{member}", "push", source)

    # ------------------------------------------------------------------ tariffs and fees
    async def put_tariff(self, tariff_id: str, name: str, prices: Sequence[tuple[int, int, int]]) -> int:
        return await self.store.put_tariff(tariff_id, name, prices)

    async def assign_tariff(self, member: str, effective_from_us: int, tariff_id: str, contracted_power_w: int) -> None:
        if not await self.store.has_tariff(tariff_id):
            raise VoltbourseError(UNKNOWN_TARIFF, f"no tariff {tariff_id!r}")
        await self.store.assign_tariff(member, effective_from_us, tariff_id, contracted_power_w)

    async def fees_at(self, t_us: int) -> FeeSchedule:
        schedules = [(t, s) for t, s in await self.store.fee_schedules() if t <= t_us]
        if not schedules:
            raise VoltbourseError(NO_FEES, f"no fee schedule in force at {iso(t_us)}")
        return schedule_from_json(schedules[-1][1])

    # ------------------------------------------------------------------ settlement
    def grid(self, start_us: int, end_us: int) -> Grid:
        if end_us <= start_us or start_us % self.step_us or end_us % self.step_us or end_us - start_us > MAX_PERIOD_US:
            raise VoltbourseError(INVALID_PERIOD, f"[{iso(start_us)}, {iso(end_us)}) is not a period of whole "
                                                  f"{self.interval_minutes}-min intervals of at most 366 days")
        return Grid(start_us, self.step_us, (end_us - start_us) // self.step_us)

    async def _series(self, grid: Grid, points: list[MeterPoint]) -> dict[str, MemberSeries]:
        """Members' series on ``grid`` from stored readings, missing ones estimated (the
        estimate may look one week back, so that week is loaded too)."""
        ext = Grid(grid.start_us - WEEK_US, grid.step_us, grid.n + WEEK_US // grid.step_us)
        per_day = 86_400_000_000 // grid.step_us
        values: dict[str, list[int | None]] = {p.point_id: [None] * ext.n for p in points}
        for r in await self.store.point_days([p.point_id for p in points], ext.start_us, ext.end_us):
            day_us = int(r["day"].timestamp()) * 1_000_000
            first = (day_us - ext.start_us) // grid.step_us
            arr = r["energy_wh"]
            lo, hi = max(0, -first), min(per_day, ext.n - first)
            if lo < hi:
                values[r["point_id"]][first + lo:first + hi] = arr[lo:hi]
        skip = WEEK_US // grid.step_us
        out: dict[str, MemberSeries] = {}
        for p in points:
            v = values[p.point_id]
            if None in v[skip:]:
                filled, est = estimate(v, lookback=WEEK_US // grid.step_us)
                vals, flags = filled[skip:], est[skip:]
            else:
                vals, flags = cast(list[int], v[skip:]), []
            s = out.get(p.member)
            if s is None:
                s = out[p.member] = MemberSeries.empty(p.member, grid)
            s.add(p.kind, vals)
            for i, f in enumerate(flags):
                if f:
                    s.estimated[i] += 1
        return out

    async def _prices(self, grid: Grid, members: Sequence[str]) -> tuple[dict[str, tuple[list[int], list[int]]],
                                                                          dict[str, int], dict[str, str]]:
        assignments: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for m, t, tariff, kw in await self.store.member_tariffs():
            assignments[m].append((t, tariff, kw))
        cache: dict[str, tuple[list[int], list[int]]] = {}

        async def tariff_series(tariff: str) -> tuple[list[int], list[int]]:
            if tariff not in cache:
                prices = await self.store.tariff_prices(tariff, grid.start_us, grid.end_us)
                try:
                    cache[tariff] = (step_series([(t, i) for t, i, _ in prices], grid),
                                     step_series([(t, f) for t, _, f in prices], grid))
                except ValueError:
                    raise VoltbourseError(NO_TARIFF, f"tariff {tariff!r} has no price at {iso(grid.start_us)} "
                                                     "(upload its prices from before the period)") from None
            return cache[tariff]

        out: dict[str, tuple[list[int], list[int]]] = {}
        contracted: dict[str, int] = {}
        tariff_of: dict[str, str] = {}
        for m in members:
            segs = assignments.get(m, [])
            in_force = [s for s in segs if s[0] <= grid.start_us]
            later = [s for s in segs if grid.start_us < s[0] < grid.end_us]
            first = in_force[-1] if in_force else (grid.start_us, self.default_tariff, 0)
            if not in_force and not await self.store.has_tariff(self.default_tariff):
                raise VoltbourseError(NO_TARIFF, f"member {m} has no tariff and there is no default tariff "
                                                 f"{self.default_tariff!r}")
            imp, feed = await tariff_series(first[1])
            contracted[m], tariff_of[m] = first[2], first[1]
            if later:
                imp, feed = list(imp), list(feed)
                for t, tariff, kw in later:
                    i0 = (t - grid.start_us + grid.step_us - 1) // grid.step_us
                    ti, tf = await tariff_series(tariff)
                    imp[i0:], feed[i0:] = ti[i0:], tf[i0:]
                    contracted[m] = max(contracted[m], kw)
            out[m] = (imp, feed)
        return out, contracted, tariff_of

    async def settle(self, start_us: int, end_us: int, member: str | None = None, *,
                     keep_series: bool = True, chunk: int = 50, need_fees: bool = True) -> Settled:
        """Settle ``[start_us, end_us)`` for every member with a metering point or a position
        (or for ``member`` alone: the community checks then cover that member only).
        Members are loaded and settled ``chunk`` at a time; ``keep_series=False`` keeps only
        their flows (a year of a large community does not fit in memory as series)."""
        grid = self.grid(start_us, end_us)
        try:
            fees = await self.fees_at(start_us)
        except VoltbourseError:
            if need_fees:
                raise
            fees = FeeSchedule()  # energy views and KPIs do not need the community's fees
        points_of: dict[str, list[MeterPoint]] = defaultdict(list)
        for p in await self.store.points(member):
            points_of[p.member].append(p)
        positions: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        money: dict[str, tuple[int, int]] = {}
        for t in await self.trades.pair_products(from_us(start_us), from_us(end_us), member):
            minutes = int(t.product_id.rsplit("-", 1)[1])
            s_us = int(t.delivery_start.timestamp()) * 1_000_000
            e_us = s_us + minutes * US_PER_MIN
            # both sides of the same trades, spread the same way: the positions of every
            # interval sum to 0 exactly
            positions[t.buyer].append((s_us, e_us, t.energy_wh))
            positions[t.seller].append((s_us, e_us, -t.energy_wh))
            paid, received = money.get(t.buyer, (0, 0))
            money[t.buyer] = (paid + t.money_units, received)
            paid, received = money.get(t.seller, (0, 0))
            money[t.seller] = (paid, received + t.money_units)
        if member is not None:  # only this member's side of its trades
            positions = defaultdict(list, {member: positions.get(member, [])})
            money = {member: money.get(member, (0, 0))}
        members = sorted(set(points_of) | set(positions))
        prices, contracted, tariff_of = await self._prices(grid, members)
        flows: dict[str, Flows] = {}
        kept: dict[str, MemberSeries] = {}
        position_sum = [0] * grid.n
        nets: dict[str, list[int]] = {}
        for k in range(0, len(members), chunk):
            part = members[k:k + chunk]
            series = await self._series(grid, [p for m in part for p in points_of.get(m, [])])
            for m in part:
                if m not in series:
                    series[m] = MemberSeries.empty(m, grid)
            part_flows = await asyncio.to_thread(self._settle_part, grid, fees, series, positions, money, prices,
                                                 position_sum)
            flows.update(part_flows)
            nets.update({m: [sum(s.imp) - sum(s.exp)] for m, s in series.items()})
            if keep_series:
                kept.update(series)
        try:
            check_balance(flows, {"community": position_sum} if member is None else {}, nets,
                          community=member is None)
        except Imbalanced:
            log.exception("metering: the settlement of [%s, %s) does not balance", iso(start_us), iso(end_us))
            raise
        return Settled(grid, kept, flows, fees, contracted, tariff_of)

    @staticmethod
    def _settle_part(grid: Grid, fees: FeeSchedule, series: dict[str, MemberSeries],
                     positions: dict[str, list[tuple[int, int, int]]], money: dict[str, tuple[int, int]],
                     prices: dict[str, tuple[list[int], list[int]]], position_sum: list[int]) -> dict[str, Flows]:
        out: dict[str, Flows] = {}
        for m, s in series.items():
            if m in positions:
                pos = positions_on_grid(positions[m], grid)
                for i, v in enumerate(pos):
                    if v:
                        position_sum[i] += v
            else:
                pos = [0] * grid.n
            imp, feed = prices[m]
            paid, received = money.get(m, (0, 0))
            out[m] = settle_member(s, pos, imp, feed, fees.imbalance_ticks, paid, received)
        return out

    # ------------------------------------------------------------------ bills
    def bill_of(self, settled: Settled, member: str, extra: tuple[Line, ...] = ()) -> Bill:
        g = settled.grid
        return bill(member, g.start_us, g.end_us, settled.flows[member], settled.fees, self.tz,
                    settled.contracted_w.get(member, 0), extra)

    async def extra_lines(self, start_us: int, end_us: int) -> dict[str, tuple[Line, ...]]:
        """Other subsystems' items for the period as bill lines (a payment to the member is a
        negative amount on its bill); settled on chain by those subsystems, shown here."""
        out: dict[str, list[Line]] = defaultdict(list)
        for source in self.bill_item_sources:
            for item in await source.bill_items(start_us, end_us):
                out[item["member"]].append(Line(item["name"], item["name"].split("_")[0], -item["amount_units"],
                                                detail=item["detail"]))
        return {m: tuple(v) for m, v in out.items()}

    def product_edge(self, us: int) -> bool:
        """Whether ``us`` is where delivery products begin and end."""
        return is_product_edge(us, self.tz, self.product_minutes)

    def last_product_edge(self, us: int) -> int:
        """The latest product edge at or before ``us``."""
        return product_edge_at_or_before(us, self.tz, self.product_minutes)

    async def run_bills(self, start_us: int, end_us: int, members: Sequence[str] | None = None) -> list[dict]:
        """Bill every member (or ``members``) for the period and issue the bills: a bill
        that did not change keeps its version; a changed one (a correction) gets a new
        version, with the change against the previous one.

        A period begins and ends on product edges (a trade's money goes with its product's
        delivery start, its energy with each interval: a cut inside a product billed them
        apart), and overlaps no other period billed before (each interval's community charges
        are collected once; the same period again is a correction)."""
        self.grid(start_us, end_us)
        for t in (start_us, end_us):
            if not self.product_edge(t):
                raise VoltbourseError(INVALID_PERIOD, f"{iso(t)} cuts a delivery product ({self.product_minutes} "
                                                      f"min from local midnight): bill whole products")
        async with self._lock:
            other = await self.store.overlapping_bill_periods(start_us, end_us)
            if other:
                raise VoltbourseError(BILL_PERIOD_OVERLAP, f"[{iso(start_us)}, {iso(end_us)}) overlaps the bills of "
                                      + ", ".join(f"[{iso(a)}, {iso(b)})" for a, b in other)
                                      + ": bill the intervals after them, or that period again (a correction)")
            settled = await self.settle(start_us, end_us, keep_series=False)
            extra = await self.extra_lines(start_us, end_us)
            event_id = METERING_EVENT_BASE + await self.store.next_run()
            out = []
            for m in sorted(settled.flows):
                if members is not None and m not in members:
                    continue
                b = self.bill_of(settled, m, extra.get(m, ()))
                body = bill_json(b, settled.tariff_of.get(m))
                digest = hashlib.sha256(canonical(body)).hexdigest()
                version, new, previous = await self.store.issue_bill(m, start_us, end_us, digest, b.total_units,
                                                                     b.community_units, body, event_id)
                delta = None
                if new and previous is not None:
                    delta = b.total_units - int(previous["total_units"]["units"])
                out.append({"member": m, "version": version, "new": new, "digest": digest,
                            "total": money_json(b.total_units), "community": money_json(b.community_units),
                            "change_units": None if delta is None else str(delta),
                            "estimated_intervals": b.flows.estimated_intervals})
            self.on_change()
            return out

    async def bill_for(self, member: str, start_us: int, end_us: int) -> dict:
        """The member's latest issued bill for the period (with its versions)."""
        versions = await self.store.bill_versions(member, start_us, end_us)
        if not versions:
            raise VoltbourseError(NO_BILL, f"no bill for {member} for [{iso(start_us)}, {iso(end_us)}): run the "
                                           "bills of the period first")
        latest = versions[-1]
        return {**latest["bill"], "version": latest["version"], "digest": latest["digest"],
                "versions": [{"version": v["version"], "digest": v["digest"],
                              "total": v["bill"]["total_units"]} for v in versions]}

    # ------------------------------------------------------------------ outlook (the trading agent's forecast)
    async def outlook(self, member: str, intervals: list[tuple[int, int]], now_us: int) -> list[Outlook] | None:
        """The member's expected grid import and export in each interval (the mean of the same
        interval on the last 7 days before ``now_us``, estimated readings included) and its
        tariff then; None when the member has no metering point (exchange.runtime.ports)."""
        points = await self.store.points(member)
        if not points or not intervals:
            return None
        h0, h1 = history_span(intervals, now_us, self.step_us)
        series = None
        if h0 < h1:
            history = Grid(h0, self.step_us, (h1 - h0) // self.step_us)
            series = (await self._series(history, points)).get(member)
        p0 = min(s for s, _ in intervals)
        p0 -= p0 % self.step_us
        p1 = max(e for _, e in intervals)
        p1 += -p1 % self.step_us
        prices: tuple[list[int], list[int]] | None
        try:
            prices = (await self._prices(Grid(p0, self.step_us, (p1 - p0) // self.step_us), [member]))[0][member]
        except VoltbourseError:  # no tariff known: the forecast stands without prices
            prices = None
        out: list[Outlook] = []
        for start, end in intervals:
            e = (expected(series.imp, series.exp, series.grid, start, end, now_us) if series is not None
                 else None)
            i = (start - p0) // self.step_us
            out.append({"start_us": start, "end_us": end, "import_wh": e.import_wh if e else 0,
                        "export_wh": e.export_wh if e else 0, "history_days": e.days if e else 0,
                        "import_price": prices[0][i] if prices else None,
                        "feed_in_price": prices[1][i] if prices else None})
        return out

    # ------------------------------------------------------------------ KPIs
    async def kpis(self, start_us: int, end_us: int, *, by_day: bool = False) -> dict:
        settled = await self.settle(start_us, end_us, need_fees=False)
        intensity_changes = await self.store.intensity(start_us, end_us)
        intensity = step_series(intensity_changes, settled.grid, default=0)
        return await asyncio.to_thread(self._kpis, settled, intensity, by_day)

    async def member_energy(self, member: str, start_us: int, end_us: int, *, by: str = "day") -> dict:
        """A member's own metered energy, its exchange position and KPIs for a period (per
        day or per interval), readings that were estimated flagged."""
        settled = await self.settle(start_us, end_us, member, need_fees=False)
        intensity = step_series(await self.store.intensity(start_us, end_us), settled.grid, default=0)
        s = settled.series.get(member) or MemberSeries.empty(member, settled.grid)
        f = settled.flows.get(member)
        g = settled.grid
        spans = ([(i0, i1) for _, i0, i1 in self.local_days(g)] if by == "day"
                 else [(i, i + 1) for i in range(g.n)])
        rows = []
        for i0, i1 in spans:
            part = slice_series(s, i0, i1)
            k = member_kpi(part, intensity[i0:i1])
            rows.append({"start": iso(g.start_us + i0 * g.step_us), "consumption_wh": k.consumption_wh,
                         "generation_wh": k.generation_wh, "import_wh": k.grid_import_wh,
                         "export_wh": k.grid_export_wh, "estimated": sum(part.estimated) if part.estimated else 0})
        return {"member": member, "start": iso(g.start_us), "end": iso(g.end_us), "by": by, "rows": rows,
                "kpi": kpi_json(member_kpi(s, intensity, f.bought_wh if f else 0)),
                "flows": f.as_dict() if f else None}

    def _kpis(self, settled: Settled, intensity: list[int], by_day: bool) -> dict:
        g = settled.grid
        bought = {m: f.bought_wh for m, f in settled.flows.items()}
        members = {m: kpi_json(member_kpi(s, intensity, bought.get(m, 0))) for m, s in settled.series.items()}
        community = community_kpi(settled.series.values(), intensity, sum(bought.values()))
        savings = 0
        for m in settled.flows:
            savings += self.bill_of(settled, m).savings_units
        out: dict[str, Any] = {"start": iso(g.start_us), "end": iso(g.end_us),
                               "community": {**kpi_json(community), "savings": money_json(savings)},
                               "members": members}
        if by_day:
            days = []
            for day, d0, d1 in self.local_days(g):
                sub = [slice_series(s, d0, d1) for s in settled.series.values()]
                days.append({"day": day.isoformat(), "start": iso(g.start_us + d0 * g.step_us),
                             **kpi_json(community_kpi(sub, intensity[d0:d1]))})
            out["days"] = days
        return out

    def local_days(self, g: Grid) -> list[tuple[date, int, int]]:
        """The community's local days on ``g``: (day, first interval, end interval); a day
        of a clock change has 92 or 100 quarter-hours, the first and last may be partial."""
        out: list[tuple[date, int, int]] = []
        i = 0
        while i < g.n:
            t = g.start_us + i * g.step_us
            day = from_us(t).astimezone(self.tz).date()
            nxt = to_us(datetime(day.year, day.month, day.day, tzinfo=self.tz) + timedelta(days=1))
            j = min(g.n, max(i + 1, -(-(nxt - g.start_us) // g.step_us)))
            out.append((day, i, j))
            i = j
        return out


def slice_series(s: MemberSeries, i0: int, i1: int) -> MemberSeries:
    grid = Grid(s.grid.start_us + i0 * s.grid.step_us, s.grid.step_us, i1 - i0)
    return MemberSeries(s.member, grid, s.imp[i0:i1], s.exp[i0:i1], s.gen[i0:i1], s.chg[i0:i1], s.dis[i0:i1],
                        s.estimated[i0:i1] if s.estimated else [])


def kpi_json(k: Kpi) -> dict[str, Any]:
    d: dict[str, Any] = dict(k.as_dict())
    for key in ("self_sufficiency_ppm", "self_consumption_ppm", "p2p_share_ppm"):
        v = d[key]
        d[key.replace("_ppm", "")] = None if v is None else str(Decimal(v).scaleb(-6))  # the ratio, exact
    return d


def bill_json(b: Bill, tariff: str | None) -> dict[str, Any]:
    """A bill as stored and served: every amount exact in money units (a string) and in
    euros, the total also rounded to cents (half-even) for display."""
    lines = [{"name": x.name, "payee": x.payee, "energy_wh": x.energy_wh, "rate_ticks": x.rate_ticks,
              "amount": money_json(x.amount_units), "detail": x.detail} for x in b.lines]
    return {"member": b.member, "start": iso(b.start_us), "end": iso(b.end_us), "tariff": tariff,
            "lines": lines, "total_units": money_json(b.total_units),
            "total_cents": eur_cents_half_even(b.total_units),
            "grid_only_units": money_json(b.grid_only_units), "savings_units": money_json(b.savings_units),
            "community_units": money_json(b.community_units),
            "flows": b.flows.as_dict(), "estimated_intervals": b.flows.estimated_intervals}


__all__ = ["MeteringService", "RowError"]
