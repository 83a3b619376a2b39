"""Run many bot members in one process against an exchange, over the SDK.

``voltbourse bots run --members 200 --speed 600 --duration 150`` starts a local
exchange (embedded PostgreSQL + ``voltbourse serve`` subprocess, simulated
clock at ``--speed``), registers the members over the operator REST API and
lets them trade. With ``--url ws://HOST:PORT/ws`` the bots join a running
exchange instead; give ``--operator-token`` to have the runner register its
members there (otherwise the operator must have registered them). Member keys
are derived from ``--seed`` (:func:`clients.sdk.member_key`), so a rerun uses
the same members.

Each member is one :class:`~clients.bots.base.Bot` with its own :class:`~clients.sdk.VoltbourseClient`
(one WebSocket, sharing one aiohttp session). A bot holds a pure planner
(:mod:`clients.bots.strategies`) per delivery day; every ``requote`` simulated
minutes it asks the planner for the orders it wants resting in each open
product and reconciles the book with them (contract in strategies.py: cancel
what differs, wait for the acks, re-plan if fills arrived meanwhile, place
the rest). Fills reach the planner from the execution reports, in stream
order; after a reconnection the missed fills are fetched with ``trades``.

Meters: the members with community profiles have a :class:`~clients.bots.metering.BotMeter`;
with an operator token the runner registers their metering points, the community's tariff
and fees; once an hour of market time (and at the end) the meters push the readings of the
intervals delivered so far over their members' WebSockets, and the run ends by billing the
metered period and reporting the community's KPIs from meters (:meth:`BotRunner.kpis`).

Market time: the runner's :class:`~clients.bots.base.MarketWatch` polls
``/api/products`` and ``/api/market`` (public REST) and estimates the
exchange's (simulated) time from the last engine time it saw plus wall time ×
``speed``. The bot base class and the market view are in
:mod:`clients.bots.base`; the concrete bots in :mod:`~clients.bots.prosumer`,
:mod:`~clients.bots.battery` and :mod:`~clients.bots.zic_bot`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from clients.bots.base import Bot, BotStats, MarketWatch
from clients.bots.battery import BatteryBot
from clients.bots.metering import BotMeter
from clients.bots.prosumer import FEED_IN_TICKS, RETAIL_TICKS, CommunityData, ProsumerBot
from clients.bots.zic_bot import ZicBot
from clients.community.kpis import Tariffs, community_kpis
from clients.community.meters import METER_INTERVAL_MINUTES, point_ids
from clients.community.profiles import COMMUNITY_TZ
from clients.sdk.client import VoltbourseClient
from clients.sdk.keys import member_keys
from clients.sdk.local import LocalExchange
from exchange.core.calendar import product_edge_at_or_before
from exchange.core.units import US_PER_MIN, iso, to_us

_loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
try:
    import uvloop
    _loop_factory = uvloop.new_event_loop
except ImportError:  # optional: the standard event loop then
    _loop_factory = None

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0  # how long stopping bots may take before they are left behind
METERING = "/api/operator/metering"
METER_STEP_US = METER_INTERVAL_MINUTES * US_PER_MIN
#: The community's tariff and fees for the bills, set by the runner unless there are some (docs/sdk.md).
TARIFF_ID = "default"
TARIFF_FROM = "2020-01-01T00:00:00Z"
FEES = {"per_kwh": [{"name": "grid_import_fee", "ct_per_kwh": "8", "basis": "import", "community_reduction_pct": "50"},
                    {"name": "marketplace_fee", "ct_per_kwh": "0.5", "basis": "p2p_traded", "payee": "community"}],
        "periodic": [{"name": "fixed_fee", "eur_per_month": "3", "payee": "community"}]}


class MeteringUnavailable(RuntimeError):
    """The exchange's metering refused a request (absent, or an error worth reporting)."""


def ct_per_kwh(ticks: int) -> str:
    """Ticks (0.01 EUR/MWh = 0.001 ct/kWh) as the metering API's decimal ct/kWh, exactly."""
    if ticks < 0:
        raise ValueError("a tariff price must be >= 0")
    whole, frac = divmod(ticks, 1000)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".")


def run_async(coro):
    """Run ``coro`` on uvloop when it is installed (the exchange service's event loop), else on asyncio's."""
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------- the runner


class BotRunner:
    """Bots of one process against one exchange."""

    def __init__(self, url: str, bots: list[Bot], *, speed: float = 1, requote_minutes: float = 15,
                 operator_token: str | None = None, concurrency: int = 50) -> None:
        self.url = url
        self.http_url = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rsplit("/ws", 1)[0]
        self.bots = bots
        self.speed = speed
        self.requote_wall_s = max(0.2, requote_minutes * 60 / speed)
        self.operator_token = operator_token
        self.concurrency = concurrency
        self.watch = MarketWatch(self.http_url, speed)
        self._days: set[date] = set()
        # metering: the bots' meters push the intervals of [meter_from_us, meter_until_us)
        self.meter_every_s = max(1.0, 3600 / speed)  # once an hour of market time
        self.meter_from_us: int | None = None
        self.meter_until_us: int | None = None

    async def register(self, http: aiohttp.ClientSession) -> tuple[int, int]:
        created = existing = 0
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        sem = asyncio.Semaphore(8)

        async def one(bot: Bot) -> None:
            nonlocal created, existing
            async with sem, http.post(f"{self.http_url}/api/operator/members", json=bot.registration(),
                                      headers=headers) as r:
                if r.status in (200, 201):
                    created += 1
                elif r.status == 409 and (await r.json()).get("error") == "MEMBER_EXISTS":
                    existing += 1
                else:
                    raise RuntimeError(f"registering {bot.address} failed: {r.status} {await r.text()}")

        await asyncio.gather(*(one(b) for b in self.bots))
        return created, existing

    # -- metering

    def meters(self) -> list[tuple[Bot, BotMeter]]:
        """The bots with a meter (members with community profiles)."""
        return [(b, m) for b in self.bots if isinstance(m := getattr(b, "meter", None), BotMeter)]

    async def _operator(self, http: aiohttp.ClientSession, method: str, path: str, what: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        async with http.request(method, f"{self.http_url}{METERING}{path}", headers=headers, **kw) as r:
            if r.status not in (200, 201):
                raise MeteringUnavailable(f"{what}: {method} {METERING}{path} answered {r.status} "
                                          f"{(await r.text())[:300]}")
            return await r.json()

    async def setup_metering(self, http: aiohttp.ClientSession) -> str:
        """Register the members' metering points (:func:`~clients.community.meters.point_ids`),
        the community's tariff (``default``, from the bots' retail and feed-in prices) and a fee
        schedule, each unless it exists. Returns what it did, for the log."""
        points = [{"point_id": pid, "member": b.address, "kind": kind} for b, _ in self.meters()
                  for kind, pid in point_ids(b.address, bool(getattr(getattr(b, "member", None), "pv_wp", 0))).items()]
        new = 0
        for k in range(0, len(points), 5_000):
            new += (await self._operator(http, "POST", "/points", "registering metering points",
                                         json={"points": points[k:k + 5_000]}))["new"]
        tariffs = await self._operator(http, "GET", "/tariffs", "reading the tariffs")
        tariff = f"tariff {TARIFF_ID!r} kept"
        if not any(t["tariff_id"] == TARIFF_ID for t in tariffs):
            await self._operator(http, "PUT", f"/tariffs/{TARIFF_ID}", "setting the tariff", json={
                "name": "Community retail", "prices": [{"valid_from": TARIFF_FROM,
                                                        "import_ct_per_kwh": ct_per_kwh(RETAIL_TICKS),
                                                        "feed_in_ct_per_kwh": ct_per_kwh(FEED_IN_TICKS)}]})
            tariff = (f"tariff {TARIFF_ID!r} set ({ct_per_kwh(RETAIL_TICKS)} ct/kWh import, "
                      f"{ct_per_kwh(FEED_IN_TICKS)} ct/kWh feed-in)")
        fees = "fee schedule kept"
        if not await self._operator(http, "GET", "/fees", "reading the fees"):
            await self._operator(http, "PUT", "/fees", "setting the fees", json={"effective_from": TARIFF_FROM, **FEES})
            fees = "fee schedule set (grid import fee 8 ct/kWh, -50 % in the community; marketplace fee 0.5 ct/kWh; " \
                   "3 EUR/month)"
        return f"metering: {new} points registered ({len(points) - new} already), {tariff}, {fees}"

    async def market_now(self, http: aiohttp.ClientSession) -> int | None:
        """The exchange's time (``/api/market``: the engine's, never ahead of its clock)."""
        async with http.get(f"{self.http_url}/api/market") as r:
            now = (await r.json()).get("now")
        return to_us(datetime.fromisoformat(now)) if now else None

    async def push_readings(self, http: aiohttp.ClientSession) -> int:
        """Every meter pushes the intervals that ended by market time since it last pushed (from
        ``meter_from_us``, the first interval of the run). Returns the readings pushed."""
        now = await self.market_now(http)
        meters = self.meters()
        if now is None or self.meter_from_us is None or not meters:
            return 0
        end = now - now % METER_STEP_US
        if end <= self.meter_from_us:
            return 0
        sem = asyncio.Semaphore(self.concurrency)
        start = self.meter_from_us

        async def one(b: Bot, m: BotMeter) -> int:
            async with sem:
                return await m.push(b.client, start, end)

        n = sum(await asyncio.gather(*(one(b, m) for b, m in meters)))
        self.meter_until_us = end
        return n

    async def meter_loop(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.meter_every_s)
            try:
                await self.push_readings(http)
            except Exception as exc:  # meters must not stop the trading
                log.warning("pushing meter readings: %r", exc)

    def _new_days(self) -> None:
        for day in self.watch.days():
            if day not in self._days:
                self._days.add(day)
                pids = self.watch.day_products(day)
                for b in self.bots:
                    b.on_new_day(day, pids, self.watch)

    async def run(self, duration: float, report_every: float = 10.0, out=print, kpis: bool = True) -> dict:
        """Trade for ``duration`` wall seconds (<= 0: until cancelled); return the summary, with
        ``summary["kpis"]`` (:meth:`kpis`, after the bots' orders are cancelled) when ``kpis``."""
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await self.watch.refresh(http)
            if self.operator_token:
                created, existing = await self.register(http)
                out(f"members: {created} registered, {existing} already registered")
                if self.meters():
                    try:
                        out(await self.setup_metering(http))
                    except (MeteringUnavailable, aiohttp.ClientError) as err:
                        out(f"metering: not set up ({err}); no KPIs from meters")
            self._new_days()
            sem = asyncio.Semaphore(self.concurrency)

            async def connect(b: Bot) -> VoltbourseClient:
                async with sem:
                    return await b.connect(self.url, http, self.watch)

            clients = await asyncio.gather(*(connect(b) for b in self.bots))
            # one bot follows all public trades (last prices and the market's time)
            await clients[0].subscribe_trades()
            out(f"{len(self.bots)} bots logged in to {self.watch.market_id} at {self.url}; "
                f"requote every {self.requote_wall_s:.2f} s wall")
            rng = random.Random(7)
            now = self.watch.now_us()
            self.meter_from_us = now + (-now) % METER_STEP_US  # the first interval that starts with the bots
            tasks = [asyncio.create_task(self.watch.run(http))]
            if self.meters():
                tasks.append(asyncio.create_task(self.meter_loop(http)))
            tasks += [asyncio.create_task(b.run(self.watch, self.requote_wall_s, random.Random(rng.random())))
                      for b in self.bots]
            t0 = time.monotonic()
            last = t0
            completed = False
            try:
                while duration <= 0 or time.monotonic() - t0 < duration:
                    await asyncio.sleep(min(1.0, max(0.05, duration - (time.monotonic() - t0))) if duration > 0
                                        else 1.0)
                    self._new_days()
                    for t in tasks:
                        exc = t.exception() if t.done() and not t.cancelled() else None
                        if exc is not None:
                            raise exc
                    if time.monotonic() - last >= report_every:
                        last = time.monotonic()
                        out(self._line(t0))
                completed = True
            finally:
                for t in tasks:
                    t.cancel()
                # bounded: a task that does not end within the grace period is reported, not waited for
                _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
                if stuck:
                    log.warning("%d bot tasks did not stop within %.0f s; leaving them", len(stuck), STOP_GRACE_S)
                summary = self.summary(time.monotonic() - t0)
                try:
                    await asyncio.wait_for(asyncio.gather(
                        *(b.client.cancel_all(timeout=5) for b in self.bots if b.client is not None
                          and b.client.connected), return_exceptions=True), 15)
                except TimeoutError:
                    log.warning("cancelling the bots' orders timed out")
                if completed and kpis:
                    try:
                        summary["kpis"] = await asyncio.wait_for(self.kpis(http), 120)
                    except Exception as exc:  # the run's own summary must still come back
                        log.warning("community KPIs failed: %r", exc)
                        summary["kpis"] = None
                try:
                    await asyncio.wait_for(asyncio.gather(*(b.client.close() for b in self.bots
                                                            if b.client is not None), return_exceptions=True), 15)
                except TimeoutError:
                    log.warning("closing the bots' connections timed out")
        return summary

    async def market_trades(self, http: aiohttp.ClientSession) -> tuple[list[dict], str]:
        """The committed trades (with buyer and seller) of every product the runner saw, and where
        they come from: the operator REST API (``GET /api/operator/products/{id}/trades``, paged)
        with an operator token, else the bots' own fills paired by trade id (a counterparty
        outside the bots stays ``None``)."""
        fills = trades_from_fills(self.bots)
        if not self.operator_token:
            return fills, "bot fills"
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        sem = asyncio.Semaphore(8)

        async def one(pid: str) -> list[dict] | None:
            rows: list[dict] = []
            after = 0
            while True:
                async with sem, http.get(f"{self.http_url}/api/operator/products/{pid}/trades",
                                         params={"after": after, "limit": 1000}, headers=headers) as r:
                    if r.status != 200:
                        log.warning("trades of %s: %s %s", pid, r.status, await r.text())
                        return None
                    page = await r.json()
                rows += page
                if len(page) < 1000:
                    return rows
                after = page[-1]["seq"]

        pids = sorted(self.watch.products)
        pages = await asyncio.gather(*(one(pid) for pid in pids))
        out: list[dict] = []
        source = "market trades"
        for pid, page in zip(pids, pages):
            if page is None:  # that product from the bots' fills instead
                source = "market trades + bot fills"
                page = [t for t in fills if t["product_id"] == pid]
            out += page
        return sorted(out, key=lambda t: t["trade_id"]), source

    async def kpis(self, http: aiohttp.ClientSession) -> dict | None:
        """The community KPIs of the run, from meters: the meters push the intervals delivered
        by now, then (with an operator token) the runner bills the metered period
        (``POST /api/operator/metering/bills/run``) and reads its KPIs
        (``GET /api/operator/metering/kpis``): ``source`` ``"meters"``, the period, the
        community's KPIs as the exchange computes them, the bills. Without a token (or when
        metering fails) ``source`` is None and ``note`` says why. ``forecast``: the
        profile-based figures of the traded hours (:func:`community_kpis_of`), for comparison
        only. None for bots without community profiles (``--strategy zic``)."""
        if getattr(self.bots[0], "data", None) is None:
            return None
        out: dict[str, Any] = {"source": None, "note": None}
        try:
            await self.push_readings(http)  # the intervals delivered since the last push
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("pushing the last meter readings: %r", exc)
        meters = [m for _, m in self.meters()]
        disabled: dict[str, int] = {}
        for m in meters:
            if m.disabled:
                disabled[m.disabled] = disabled.get(m.disabled, 0) + 1
        out["readings"] = {"pushed": sum(m.pushed for m in meters), "messages": sum(m.messages for m in meters),
                           "failures": sum(m.failures for m in meters),
                           "members": sum(1 for m in meters if m.pushed), "disabled": disabled,
                           "unmetered_batteries": sum(1 for b, _ in self.meters() if isinstance(b, BatteryBot))}
        if not self.operator_token:
            out["note"] = ("the KPIs from meters need an operator token (--operator-token): the bills and the "
                           "community's KPIs are operator routes")
        elif self.meter_from_us is None or self.meter_until_us is None or self.meter_until_us <= self.meter_from_us:
            out["note"] = "no metering interval was delivered during the run: nothing metered to report"
        else:
            try:
                out.update(await self.meter_kpis(http, self.meter_from_us, self.meter_until_us))
            except (MeteringUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("KPIs from meters failed: %s", exc)
                out["note"] = f"the KPIs from meters failed: {exc}"
        trades, source = await self.market_trades(http)
        tz = self.watch.config.get("calendar", {}).get("timezone")
        days = {pid: p.delivery_day for pid, p in self.watch.products.items()}
        still_open = {pid for pid, p in self.watch.products.items() if p.state in ("pre_open", "open")}
        out["timezone"] = tz
        out["forecast"] = community_kpis_of(self.bots, trades, days, source=source, tz=tz, still_open=still_open)
        return out

    def _product_edge(self, us: int, *, up: bool) -> int:
        """The nearest edge of a delivery product at or after (``up``) or before ``us``:
        bills are for whole products."""
        cal = self.watch.config.get("calendar", {})
        minutes = int(cal.get("product_minutes") or 60)
        zone = ZoneInfo(cal.get("timezone") or COMMUNITY_TZ)
        edge = product_edge_at_or_before(us, zone, minutes)
        return edge + minutes * US_PER_MIN if up and edge < us else edge

    async def meter_kpis(self, http: aiohttp.ClientSession, start_us: int, end_us: int) -> dict:
        """Read the KPIs of ``[start_us, end_us)`` (whole metering intervals) from meters, and
        bill the whole products in it (a bill period ends on product edges)."""
        period = {"start": iso(start_us), "end": iso(end_us)}
        b0, b1 = self._product_edge(start_us, up=True), self._product_edge(end_us, up=False)
        run: dict[str, Any] = {"bills": [], "total": None, "community": None}
        if b1 > b0:
            run = await self._operator(http, "POST", "/bills/run", "running the bills",
                                       json={"start": iso(b0), "end": iso(b1)})
        k = await self._operator(http, "GET", "/kpis", "reading the KPIs", params=period)
        bills = run["bills"]
        return {"source": "meters", "start": period["start"], "end": period["end"],
                "interval_minutes": METER_INTERVAL_MINUTES, "intervals": (end_us - start_us) // METER_STEP_US,
                "members": len(k["members"]), "community": k["community"],
                "bills": {"count": len(bills), "new": sum(1 for b in bills if b["new"]), "total": run["total"],
                          "start": iso(b0) if b1 > b0 else None, "end": iso(b1) if b1 > b0 else None,
                          "community": run["community"],
                          "estimated_intervals": sum(b.get("estimated_intervals") or 0 for b in bills)}}

    def _line(self, t0: float) -> str:
        s = self.summary(time.monotonic() - t0)
        tz = self.watch.config.get("calendar", {}).get("timezone")
        now = datetime.fromtimestamp(self.watch.now_us() / 1e6, ZoneInfo(tz) if tz else None)
        return (f"  [{now:%a %H:%M}] {s['placed']} placed, {s['cancelled']} cancelled, {s['fills']} fills, "
                f"{s['traded_wh'] / 1000:.1f} kWh traded, {s['open_orders']} open, rejected {s['rejected']}")

    def summary(self, seconds: float) -> dict:
        tot = BotStats()
        open_orders = 0
        for b in self.bots:
            s = b.stats
            tot.placed += s.placed
            tot.cancelled += s.cancelled
            tot.fills += s.fills
            tot.bought_wh += s.bought_wh
            tot.sold_wh += s.sold_wh
            tot.lost += s.lost
            tot.rejected.update(s.rejected)
            open_orders += len(b.open)
        return {"bots": len(self.bots), "seconds": round(seconds, 1), "placed": tot.placed,
                "cancelled": tot.cancelled, "fills": tot.fills, "traded_wh": tot.bought_wh,
                "bought_wh": tot.bought_wh, "sold_wh": tot.sold_wh, "open_orders": open_orders,
                "lost": tot.lost, "rejected": dict(tot.rejected),
                "reconnects": sum(max(0, b.client.connects - 1) for b in self.bots if b.client is not None)}


# --------------------------------------------------------------------------- community KPIs


def trades_from_fills(bots: list[Bot]) -> list[dict]:
    """The trades the bots filled, buyer and seller paired by trade id (``None``: not a bot)."""
    by_id: dict[int, dict] = {}
    for b in bots:
        for tid, (pid, side, qty, price) in b.fill_log.items():
            t = by_id.setdefault(tid, {"trade_id": tid, "product_id": pid, "energy_wh": qty, "price_ticks": price,
                                       "buyer": None, "seller": None})
            t["buyer" if side == "buy" else "seller"] = b.address
    return [by_id[k] for k in sorted(by_id)]


def community_kpis_of(bots: Sequence[Bot], trades: list[dict], days: dict[str, date], *, source: str = "",
                      tz: str | None = None, still_open: AbstractSet[str] = frozenset(), top: int = 5) -> dict:
    """:func:`clients.community.kpis.community_kpis` over the bots' community, for the delivery
    hours with at least one trade between two bots: the members' profiles
    (``bots[i].data.table(day)``, battery-free as in the KPI definitions) restricted to those
    hours, and those trades. Trades with a member outside the bots are left out (counted under
    ``external``). A battery's charging and discharging are not in the profiles, so what battery
    owners buy and sell counts in their grid flows (``batteries``: their P2P Wh). Adds ``hours``,
    ``hours_still_open``, ``no_p2p`` (grid import/export and cost without the trades),
    ``top_pairs`` (largest P2P flows by energy), ``p2p_pairs``, ``source`` and ``timezone``.
    Exact integers."""
    members = {b.address: b for b in bots}
    batteries = {b.address for b in bots if getattr(getattr(b, "member", None), "battery", None) is not None}
    inside, outside = [], []
    for t in trades:
        if t["buyer"] in members and t["seller"] in members:
            inside.append(t)
        elif t["buyer"] in members or t["seller"] in members:
            outside.append(t)
    hours = sorted({t["product_id"] for t in inside})
    first = bots[0]
    if not isinstance(first, ProsumerBot | BatteryBot):
        raise TypeError(f"community KPIs need bots with community profiles, not {type(first).__name__}")
    data = first.data
    hourly: dict[str, dict[str, tuple[int, int]]] = {b.address: {} for b in bots}
    for day in sorted({days[pid] for pid in hours}):
        table = data.table(day)
        for addr, row in hourly.items():
            prof = table.get(addr, {})
            row.update((pid, prof[pid]) for pid in hours if days[pid] == day and pid in prof)
    tariffs = Tariffs(RETAIL_TICKS, FEED_IN_TICKS)
    k = community_kpis(hourly, inside, tariffs)
    k0 = community_kpis(hourly, [], tariffs)
    pairs = sorted(((e, v, s, b) for s, row in k["p2p_matrix"].items() for b, (e, v) in row.items()),
                   key=lambda x: (-x[0], x[2], x[3]))
    k.update(
        source=source, timezone=tz, hours=hours, hours_still_open=sorted(still_open & set(hours)),
        no_p2p={"import_wh": k0["import_wh"], "export_wh": k0["export_wh"], "cost": k0["cost"]},
        p2p_pairs=len(pairs),
        top_pairs=[{"seller": s, "buyer": b, "seller_name": members[s].name, "buyer_name": members[b].name,
                    "energy_wh": e, "money": v} for e, v, s, b in pairs[:top]],
        external={"trades": len(outside), "energy_wh": sum(t["energy_wh"] for t in outside)},
        batteries={"bought_wh": sum(t["energy_wh"] for t in inside if t["buyer"] in batteries),
                   "sold_wh": sum(t["energy_wh"] for t in inside if t["seller"] in batteries)},
    )
    return k


def _fixed(n: int, d: int, places: int) -> str:
    """``n / d`` with ``places`` decimals, rounded half to even, from integers (display only)."""
    q, r = divmod(n * 10**places, d)
    if 2 * r > d or (2 * r == d and q % 2):
        q += 1
    sign, q = ("-" if q < 0 else ""), abs(q)
    whole, frac = divmod(q, 10**places)
    return f"{sign}{whole}.{frac:0{places}d}" if places else f"{sign}{whole}"


def _kwh(wh: int) -> str:
    return _fixed(wh, 1000, 1) + " kWh"


def _eur(money: int) -> str:  # money units: 1e-8 EUR
    return "EUR " + _fixed(money, 10**8, 2)


def _pct(bp: int) -> str:
    return _fixed(bp, 100, 2) + " %"


def _ppm_pct(ppm: int | None) -> str:
    return "n/a" if ppm is None else _fixed(ppm, 10_000, 2) + " %"


def _units_eur(money: dict) -> str:  # a money_json of the metering API
    return _eur(int(money["units"]))


def format_kpis(k: dict | None) -> list[str]:
    """The run's KPI block (:meth:`BotRunner.kpis`: from meters, then the forecast comparison)
    as readable lines; a bare :func:`community_kpis_of` dict as :func:`format_forecast_kpis`."""
    if not k:
        return []
    if "forecast" not in k:
        return format_forecast_kpis(k)
    lines = format_meter_kpis(k)
    if k.get("forecast"):
        lines.append("forecast comparison (the profiles without forecast error, only the hours traded P2P; "
                     "not metered):")
        lines += ["  " + line for line in format_forecast_kpis(k["forecast"])]
    return lines


def format_meter_kpis(k: dict) -> list[str]:
    """The KPIs from meters of :meth:`BotRunner.kpis` as readable lines."""
    r = k["readings"]
    pushed = f"{r['pushed']} readings pushed by {r['members']} members' meters" + (
        f", {r['failures']} pushes failed" if r["failures"] else "") + (
        "".join(f", {n} meters off ({why})" for why, n in r["disabled"].items()))
    if k["source"] != "meters":
        return [f"community KPIs from meters: none ({k['note']}); {pushed}"]
    zone = ZoneInfo(k["timezone"]) if k.get("timezone") else None
    first = datetime.fromisoformat(k["start"]).astimezone(zone)
    last = datetime.fromisoformat(k["end"]).astimezone(zone)
    c, b = k["community"], k["bills"]
    est = f", {c['estimated_intervals']} member-intervals estimated" if c["estimated_intervals"] else ""
    return [
        f"community KPIs from meters: {k['members']} members, {k['intervals']} intervals of {k['interval_minutes']} "
        f"min ({first:%a %Y-%m-%d %H:%M} to {last:%H:%M %Z}); {pushed}{est}",
        f"  self-sufficiency  {_ppm_pct(c['self_sufficiency_ppm'])} (consumption {_kwh(c['consumption_wh'])}, "
        f"community grid import {_kwh(c['grid_import_wh'])})",
        f"  self-consumption  {_ppm_pct(c['self_consumption_ppm'])} of PV generation {_kwh(c['generation_wh'])}",
        f"  grid              import {_kwh(c['grid_import_wh'])}, export {_kwh(c['grid_export_wh'])} "
        f"(the community behind one connection)",
        f"  peak import       {_fixed(c['peak_import_w'], 1000, 1)} kW ({_kwh(c['peak_import_wh'])} in one interval)",
        f"  P2P share         {_ppm_pct(c['p2p_share_ppm'])} of consumption bought P2P ({_kwh(c['p2p_bought_wh'])})",
        f"  savings           {_units_eur(c['savings'])} vs grid-only (the bills' counterfactual)",
        f"  bills             {b['count']} issued ({b['new']} new), total {_units_eur(b['total'])}, "
        f"of which {_units_eur(b['community'])} to the community",
    ] + ([f"  batteries         {r['unmetered_batteries']} not metered (the profiles are battery-free): what their "
          "owners buy or sell P2P is not in their readings, so the P2P share can exceed 100 % and their bills "
          "settle those trades against the household alone"] if r.get("unmetered_batteries") else [])


def format_forecast_kpis(k: dict | None) -> list[str]:
    """The profile-based KPI block (:func:`community_kpis_of`) as readable lines."""
    if not k:
        return []
    hours = k["hours"]
    if not hours:
        return ["forecast KPIs: no trade between the bots, nothing to report"]
    zone = ZoneInfo(k["timezone"]) if k.get("timezone") else None

    def start(pid: str) -> datetime:
        return datetime.strptime(pid.split("-")[0], "%Y%m%dT%H%MZ").replace(tzinfo=ZoneInfo("UTC")).astimezone(zone)

    first = start(hours[0])
    last = start(hours[-1])
    last_end = (last + timedelta(minutes=int(hours[-1].rsplit("-", 1)[1]))).astimezone(zone)
    span = f"{first:%a %Y-%m-%d %H:%M} to {last_end:%H:%M %Z}"
    still = f", {len(k['hours_still_open'])} still open" if k.get("hours_still_open") else ""
    t = k["tariffs"]
    income = "; negative: net income" if min(k["cost"], k["baseline_no_p2p"], k["baseline_grid_only"]) < 0 else ""
    lines = [
        f"forecast KPIs: {k['members']} members, {len(hours)} delivery hours traded ({span}{still}), "
        f"from the {k['source']}",
        f"  self-sufficiency  {_pct(k['self_sufficiency_bp'])} with P2P, "
        f"{_pct(k['self_sufficiency_no_p2p_bp'])} without (own PV only)",
        f"  grid import       {_kwh(k['import_wh'])} with P2P, {_kwh(k['no_p2p']['import_wh'])} without",
        f"  grid export       {_kwh(k['export_wh'])} with P2P, {_kwh(k['no_p2p']['export_wh'])} without",
        f"  consumption       {_kwh(k['consumption_wh'])}, PV generation {_kwh(k['generation_wh'])}",
        f"  community cost    {_eur(k['cost'])} with P2P, {_eur(k['baseline_no_p2p'])} without P2P, "
        f"{_eur(k['baseline_grid_only'])} grid-only (retail {_fixed(t['retail_ticks'], 100, 2)}, "
        f"feed-in {_fixed(t['feed_in_ticks'], 100, 2)} EUR/MWh{income})",
        f"  savings           {_eur(k['savings_vs_no_p2p'])} vs no P2P, {_eur(k['savings_vs_grid_only'])} vs grid-only",
        f"  P2P               {_kwh(k['traded_wh'])} in {k['trades']} trades, {_eur(k['traded_money'])} "
        f"(average {_fixed(k['traded_money'], k['traded_wh'] * 100, 2)} EUR/MWh), {k['p2p_pairs']} seller->buyer pairs",
    ]
    bat = k["batteries"]
    if bat["bought_wh"] or bat["sold_wh"]:
        lines.append(f"  batteries         {_kwh(bat['bought_wh'])} bought, {_kwh(bat['sold_wh'])} sold P2P by battery "
                     f"owners; charging/discharging is not in the profiles, so it counts as their grid export/import")
    if k["top_pairs"]:
        lines.append("  top pairs (seller -> buyer):")
        ws = max(len(p["seller_name"]) for p in k["top_pairs"])
        wb = max(len(p["buyer_name"]) for p in k["top_pairs"])
        lines += [f"    {p['seller_name']:<{ws}} -> {p['buyer_name']:<{wb}} {_kwh(p['energy_wh']):>11}  "
                  f"{_eur(p['money'])}" for p in k["top_pairs"]]
    if k["external"]["trades"]:
        lines.append(f"  left out: {k['external']['trades']} trades ({_kwh(k['external']['energy_wh'])}) "
                     f"with members outside the bots")
    return lines


# --------------------------------------------------------------------------- building the bots


def make_bots(members: int, seed: str | int = 1, strategy: str = "community", zic_units: int = 3) -> list[Bot]:
    """``members`` bots with keys from ``seed``: ``community`` (prosumers/consumers with
    forecasts from the community profiles, batteries, the aggregator's battery),
    or ``zic`` (ZI-C buyers and sellers)."""
    keys = member_keys(f"bots-{seed}", members)
    if strategy == "zic":
        rng = random.Random(f"zic-bots-{seed}")
        return [ZicBot.random(k, "buy" if i % 2 == 0 else "sell", rng, units=zic_units, seed=i)
                for i, k in enumerate(keys)]
    if strategy != "community":
        raise ValueError(f"unknown strategy {strategy!r}")
    data = CommunityData([k.address for k in keys], seed=seed)
    bots: list[Bot] = []
    for k, m in zip(keys, data.members):
        if m.battery is not None:
            bots.append(BatteryBot(k, m, data))
        else:
            bots.append(ProsumerBot(k, m, data))
    return bots


def terminate_gracefully() -> None:
    """SIGTERM before the event loop runs ends the process like Ctrl-C (KeyboardInterrupt),
    so a local exchange being started is stopped again; while the bots run, SIGTERM cancels
    the run instead (:func:`_cancel_on_sigterm`): the bots stop within their grace period and
    the local exchange (its server and embedded PostgreSQL) is shut down."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


async def _cancelled_on_sigterm(coro: Coroutine[Any, Any, dict]) -> dict:
    """Run ``coro``; SIGTERM cancels it (its cleanup runs, bounded) instead of interrupting the
    event loop wherever it is."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.default_int_handler)


def run_bots(*, members: int = 200, speed: float = 600, duration: float = 150, url: str | None = None,
             operator_token: str | None = None, seed: str | int = 1, strategy: str = "community",
             requote_minutes: float = 15, report_every: float = 10, out=print) -> dict:
    """Blocking entry point of ``voltbourse bots run``: with ``url`` join that exchange, else
    start a local one on a simulated clock (rolling gate 60 min before delivery, starting at
    22:50 local time of the community's time zone so the next day's products are open)."""
    bots = make_bots(members, seed, strategy)
    terminate_gracefully()
    if url is not None:
        runner = BotRunner(url, bots, speed=speed, requote_minutes=requote_minutes, operator_token=operator_token)
        return run_async(_cancelled_on_sigterm(runner.run(duration, report_every, out)))

    zone = ZoneInfo(COMMUNITY_TZ)
    today = datetime.now(zone).date()
    start = datetime(today.year, today.month, today.day, 22, 50, tzinfo=zone).astimezone(UTC)
    token = secrets.token_urlsafe(16)
    market_id = f"bots-{datetime.now(UTC):%Y%m%d%H%M%S}"
    with LocalExchange(market_id=market_id, operator_token=token, clock="sim", sim_speed=int(speed),
                       sim_start=start.isoformat(), gate="rolling", gate_rolling_minutes=60,
                       timezone=COMMUNITY_TZ) as ex:
        out(f"local exchange {market_id} at {ex.ws_url} (clock x{int(speed)} from {start.astimezone(zone):%H:%M %Z}); "
            f"log {ex.log_path}")
        runner = BotRunner(ex.ws_url, bots, speed=speed, requote_minutes=requote_minutes, operator_token=token)
        return run_async(_cancelled_on_sigterm(runner.run(duration, report_every, out)))
