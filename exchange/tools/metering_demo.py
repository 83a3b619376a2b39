"""The demo's meters and bills (exchange/metering): the members' metering points, the
community's tariff and fees at the start; at the end, the meter readings of the delivered
quarter-hours (each member's community profile, clients.community.profiles, plus what it
traded, off by a seeded forecast error) uploaded as a CSV like an operator would, every
member billed, and the community's KPIs computed from the meters."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

from aiohttp import web

from clients.community.profiles import Location, make_community, member_profile
from exchange.core.units import US_PER_MIN, eur, from_us, iso, to_us
from exchange.metering.core.model import EXAMPLE_FEES, Grid, MeterPoint, PointKind
from exchange.metering.core.series import positions_on_grid
from exchange.metering.fees import schedule_json
from exchange.metering.plugin import METERING
from exchange.metering.service import MeteringService
from exchange.protocol.errors import VoltbourseError

STEP_US = 15 * US_PER_MIN
#: the forecast error of a meter reading against the member's profile, per mille (+/-)
FORECAST_ERROR_PERMILLE = 150


def _points(address: str) -> list[MeterPoint]:
    stem = address[2:10].lower()
    return [MeterPoint(f"{stem}-imp", address, PointKind.IMPORT), MeterPoint(f"{stem}-exp", address, PointKind.EXPORT),
            MeterPoint(f"{stem}-gen", address, PointKind.GENERATION)]


class DemoMeters:
    def __init__(self, app: web.Application, addresses: list[str], tz: str, seed: int = 42) -> None:
        self.svc: MeteringService = app[METERING]
        self.tz = tz
        self.seed = seed
        self.members = make_community(len(addresses), seed=seed, ids=addresses)
        self.uploaded_until = 0
        self.billed: list[tuple[int, int]] = []  # the periods billed, consecutive, on product edges

    async def setup(self, since_us: int, history_days: int = 7) -> int:
        """Points, the default tariff (30 ct/kWh import, 8 ct/kWh feed-in), the fees, and the
        meters' readings of the ``history_days`` days before ``since_us`` (the members' own
        profiles, nothing traded), so that the portal's trading agent has a week to forecast
        from as soon as the demo starts."""
        points = [p for m in self.members for p in _points(m.member_id)]
        await self.svc.add_points(points)
        start = since_us // STEP_US * STEP_US - history_days * 86_400_000_000
        # prices from the first day of the month of the oldest reading (local time): the
        # portal's last 7 days and the operator page's month of KPIs have a tariff throughout
        first = from_us(start).astimezone(self.svc.tz).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        valid_from = min(since_us, to_us(first))
        await self.svc.put_tariff("default", "Demo retail", [(valid_from, 30_000, 8_000)])
        await self.svc.store.put_fee_schedule(valid_from, schedule_json(EXAMPLE_FEES))
        if history_days:
            grid = Grid(start, STEP_US, history_days * 86_400_000_000 // STEP_US)
            await self.svc.import_file(self.readings_csv(grid, {}), "demo-history.csv", now_us=since_us)
        return len(points)

    async def positions(self, grid: Grid) -> dict[str, list[int]]:
        """Each member's traded position per quarter-hour (bought - sold, Wh)."""
        per: dict[str, list[tuple[int, int, int]]] = {}
        for t in await self.svc.trades.pair_products(from_us(grid.start_us), from_us(grid.end_us)):
            s_us = to_us(t.delivery_start)
            e_us = s_us + int(t.product_id.rsplit("-", 1)[1]) * US_PER_MIN
            per.setdefault(t.buyer, []).append((s_us, e_us, t.energy_wh))
            per.setdefault(t.seller, []).append((s_us, e_us, -t.energy_wh))
        return {m: positions_on_grid(v, grid) for m, v in per.items()}

    def readings_csv(self, grid: Grid, positions: dict[str, list[int]]) -> bytes:
        """Every point's readings on ``grid``. A member consumes its profile's consumption
        plus what it bought and generates its profile's generation plus what it sold, each
        traded part off by a seeded forecast error (+/- 15 %): the meters of members who
        trade what they forecast."""
        rows = ["point_id,interval_start,energy_wh"]
        days: set[date] = set()
        for i in range(0, grid.n, 4):
            days.add(from_us(grid.start_us + i * grid.step_us).astimezone(self.svc.tz).date())
        loc = Location(timezone=self.tz)
        e = FORECAST_ERROR_PERMILLE
        for m in self.members:
            stem = m.member_id[2:10].lower()
            pos = positions.get(m.member_id, [0] * grid.n)
            for day in sorted(days):
                prof = member_profile(m, day, loc, self.seed)
                for slot, cons, gen in zip(prof.slots, prof.consumption_wh, prof.generation_wh, strict=True):
                    s = to_us(slot)
                    if not grid.start_us <= s < grid.end_us:
                        continue
                    # the error of one member's interval is the same in every upload
                    rng = random.Random(f"meter|{self.seed}|{m.member_id}|{s}")
                    p = pos[(s - grid.start_us) // grid.step_us]
                    cons += max(p, 0) * (1000 + rng.randint(-e, e)) // 1000
                    gen += max(-p, 0) * (1000 + rng.randint(-e, e)) // 1000
                    ts = iso(s)
                    rows.append(f"{stem}-imp,{ts},{max(cons - gen, 0)}")
                    rows.append(f"{stem}-exp,{ts},{max(gen - cons, 0)}")
                    rows.append(f"{stem}-gen,{ts},{gen}")
        return ("\n".join(rows) + "\n").encode()

    async def tick(self, start_us: int, now_us: int) -> None:
        """While the demo runs: upload the quarter-hours delivered since the last upload (as a
        member's gateway would) and issue interim bills, so the portal and the operator page
        show energy and bills live."""
        end_us = now_us // STEP_US * STEP_US
        first = max(start_us, self.uploaded_until)
        if end_us <= first:
            return
        grid = Grid(first, STEP_US, (end_us - first) // STEP_US)
        await self.svc.import_file(self.readings_csv(grid, await self.positions(grid)), "demo-live.csv",
                                   now_us=now_us)
        self.uploaded_until = end_us
        await self._bill_up_to(start_us, end_us)

    async def _bill_up_to(self, start_us: int, until_us: int) -> None:
        """Bill the whole products delivered since the last bill run, as one period: the
        periods follow each other (each interval is charged once, in one period)."""
        first = self.billed[-1][1] if self.billed else start_us
        end = self.svc.last_product_edge(until_us)
        if end > first:
            await self.svc.run_bills(first, end)
            self.billed.append((first, end))

    async def finish(self, start_us: int, now_us: int, base: str, token: str, out=print) -> dict:
        """Upload the delivered intervals' readings, bill the period, print bills and KPIs."""
        end_us = now_us // STEP_US * STEP_US
        if end_us <= start_us:
            out("Metering: no quarter-hour delivered yet, nothing to bill")
            return {}
        grid = Grid(start_us, STEP_US, (end_us - start_us) // STEP_US)
        data = self.readings_csv(grid, await self.positions(grid))
        up = await self.svc.import_file(data, "demo-readings.csv", now_us=now_us)
        out(f"Metering: {up['rows']} meter readings uploaded ({up['points']} points, {iso(start_us)} .. "
            f"{iso(end_us)}); bills and KPIs below come from them")
        await self._bill_up_to(start_us, end_us)
        # the bills of every period billed (the latest version of each, corrections included)
        for a, b in self.billed:
            await self.svc.run_bills(a, b)  # readings uploaded since: a correction where they changed a bill
        k = await self.svc.kpis(start_us, end_us)
        periods = ", ".join(f"{iso(a)} .. {iso(b)}" for a, b in self.billed) or "none (no whole product delivered)"
        out(f"Bills, one per period ({periods}), summed per member (EUR; + the member pays, - it is paid):")
        out(f"  {'member':<44} {'P2P bought kWh':>14} {'sold kWh':>9} {'total':>10} {'grid only':>10} {'saved':>8}")
        members = sorted({m.member_id for m in self.members})
        bills: list[dict] = []
        for member in members:
            sums = [0, 0, 0, 0, 0]
            found = False
            for a, b in self.billed:
                try:
                    full = await self.svc.bill_for(member, a, b)
                except VoltbourseError:
                    continue
                found = True
                f = full["flows"]
                for i, v in enumerate((f["bought_wh"], f["sold_wh"], int(full["total_units"]["units"]),
                                       int(full["grid_only_units"]["units"]), int(full["savings_units"]["units"]))):
                    sums[i] += v
            if found:
                bills.append({"member": member, "total_units": str(sums[2])})
                out(f"  {member:<44} {_kwh(sums[0]):>14} {_kwh(sums[1]):>9} {_eur(str(sums[2])):>10} "
                    f"{_eur(str(sums[3])):>10} {_eur(str(sums[4])):>8}")
        first = bills[0]["member"] if bills else None
        if first and self.billed:
            a, b = self.billed[-1]
            full = await self.svc.bill_for(first, a, b)
            out(f"  every line of {first}'s bill for {iso(a)} .. {iso(b)}:")
            for line in full["lines"]:
                out(f"    {line['name']:<22} {line['payee']:<10} {_eur(line['amount']['units']):>10} EUR"
                    + (f"  ({_kwh(line['energy_wh'])} kWh)" if line["energy_wh"] else ""))
            q = f"start={iso(a)}&end={iso(b)}"
            out(f"  statement: {base}/api/operator/metering/bills/{first}?{q}&format=html "
                f"(and format=pdf, csv; header 'Authorization: Bearer {token}')")
        c = k["community"]
        out("Community KPIs from meters: "
            f"consumption {_kwh(c['consumption_wh'])} kWh, generation {_kwh(c['generation_wh'])} kWh, "
            f"grid import {_kwh(c['grid_import_wh'])} kWh, export {_kwh(c['grid_export_wh'])} kWh, "
            f"self-sufficiency {_pct(c['self_sufficiency'])}, self-consumption {_pct(c['self_consumption'])}, "
            f"P2P share {_pct(c['p2p_share'])}, peak import {_kwh(c['peak_import_w'])} kW, "
            f"savings vs grid only {_eur(c['savings']['units'])} EUR, "
            f"{c['estimated_intervals']} readings estimated")
        return {"bills": bills, "kpis": k}


def _eur(units: str) -> str:
    return f"{eur(int(units)).quantize(Decimal('0.01'))}"


def _kwh(wh: int) -> str:
    return f"{Decimal(wh).scaleb(-3):.3f}"


def _pct(ratio: str | None) -> str:
    return "n/a" if ratio is None else f"{(Decimal(ratio) * 100).quantize(Decimal('0.1'))} %"
