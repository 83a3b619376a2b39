"""``voltbourse demo`` / ``make demo``: a community trading on an accelerated clock.

Starts the embedded PostgreSQL (or uses ``VOLTBOURSE_DATABASE_URL``), creates a
fresh demo market with rolling gate closure (60 minutes before delivery) on a
simulated clock running ``speed`` times faster than the wall clock, registers
members (consumers, prosumers, a battery owner) and lets simple seeded trading
bots submit orders through the same runtime the service uses (durable before
acknowledged). The console shows delivery days opening, orders matching and
gates closing; the HTTP views are served while it runs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import secrets
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from eth_account import Account
from pydantic import SecretStr

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import (
    CancelOrder,
    ModifyOrder,
    OrderAccepted,
    OrderExpired,
    PlaceOrder,
    ProductStateChanged,
    Side,
    TimeInForce,
    TradeEvent,
    command_outcome,
)
from exchange.core.units import MONEY_UNITS_PER_EUR, from_us, price_eur_per_mwh
from exchange.gateway.keys import MEMBERS
from exchange.runtime.clock import SimClock
from exchange.runtime.config import Settings
from exchange.runtime.db import database, upgrade
from exchange.runtime.journal import Entry
from exchange.runtime.members import MemberIn, Role
from exchange.runtime.service import Market, run_async
from exchange.tools.flex_demo import run_flex_demo
from exchange.tools.metering_demo import DemoMeters
from exchange.tools.server import start_deployment
from settlement.plugin import SETTLEMENT, run_reconcile
from settlement.worker import unsettled

log = logging.getLogger(__name__)

ROLES: tuple[Role, ...] = ("consumer", "prosumer", "prosumer", "consumer", "battery")


class Bot:
    """A zero-intelligence-constrained style trader: random limit prices on the right side
    of its private value (buyers) or cost (sellers), never at a loss."""

    def __init__(self, member: MemberId, role: str, rng: random.Random) -> None:
        self.member = member
        self.role = role
        self.rng = rng
        self.value = rng.randrange(6_000, 16_000)  # ticks: 60-160 EUR/MWh willingness to pay
        self.cost = rng.randrange(2_000, 10_000)  # ticks: PV marginal cost + opportunity
        self.open: list[OrderId] = []

    def next_command(self, products: list[str]) -> PlaceOrder | CancelOrder | ModifyOrder:
        r = self.rng
        if self.open and r.random() < 0.15:
            oid = self.open.pop(r.randrange(len(self.open)))
            if r.random() < 0.5:
                return CancelOrder(0, self.member, oid)
            return ModifyOrder(0, self.member, oid, price=None, quantity=r.randrange(1, 10) * 100)
        if self.role == "consumer":
            side = Side.BUY
        elif self.role == "prosumer":
            side = Side.SELL if r.random() < 0.7 else Side.BUY
        else:
            side = Side.BUY if r.random() < 0.5 else Side.SELL
        if side is Side.BUY:
            price = r.randrange(self.value - 4_000, self.value + 1)
        else:
            price = r.randrange(self.cost, self.cost + 4_000)
        tif = TimeInForce.IOC if r.random() < 0.1 else TimeInForce.GTC
        return PlaceOrder(0, self.member, ProductId(r.choice(products[:6])), side, price, r.randrange(1, 20) * 100, tif)


class Console:
    """Prints what the committed event stream shows (it is a downstream subscriber)."""

    def __init__(self, market: Market, zone, label: str = "") -> None:
        self.market = market
        self.zone = zone
        self.label = label  # "" for the first community; the second's lines carry its id
        self.trades = 0
        self.energy = 0
        self.value = 0
        self.per_product: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # trades, Wh, money, expired

    def local(self, us: int) -> str:
        return from_us(us).astimezone(self.zone).strftime("%a %d %b %H:%M")

    def __call__(self, entries: list[Entry]) -> None:
        opened: dict[str, list[str]] = defaultdict(list)
        for e in entries:
            for ev in e.events:
                if isinstance(ev, TradeEvent):
                    self.trades += 1
                    self.energy += ev.quantity
                    self.value += ev.quantity * ev.price
                    s = self.per_product[ev.product_id]
                    s[0] += 1
                    s[1] += ev.quantity
                    s[2] += ev.quantity * ev.price
                elif isinstance(ev, OrderExpired):
                    self.per_product[ev.product_id][3] += 1
                elif isinstance(ev, ProductStateChanged) and ev.state == "open":
                    opened[self.local(ev.ts)].append(ev.product_id)
                elif isinstance(ev, ProductStateChanged) and ev.state == "closed":
                    n, wh, money, expired = self.per_product[ev.product_id]
                    vwap = f"{price_eur_per_mwh(money // wh):>7} EUR/MWh" if wh else "     no trades"
                    print(f"  {self.label}[{self.local(ev.ts)}] gate closed  {ev.product_id}: {n:4d} trades "
                          f"{wh / 1000:8.1f} kWh  VWAP {vwap}  {expired} orders expired", flush=True)
        for when, pids in opened.items():
            print(f"  {self.label}[{when}] opened {len(pids)} products ({pids[0]} .. {pids[-1]})", flush=True)


async def _demo(dsn: str, settings: Settings, speed: int, duration: float, members: int) -> int:
    # SIGTERM ends the demo as Ctrl-C does (its summary, the second community archived, the
    # embedded PostgreSQL released), instead of killing it on the spot; the task is cancelled
    # directly (a demo started in the background of a script has SIGINT ignored)
    main = asyncio.current_task()
    if main is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    zone = settings.tz
    # Start the simulated clock at 22:50 local: the next day's products are open and the
    # first rolling gate (23:00 for 00:00 delivery) closes within seconds.
    today = datetime.now(zone).date()
    start = datetime(today.year, today.month, today.day, 22, 50, tzinfo=zone).astimezone(UTC)
    clock = SimClock(start, speed=speed)
    # A demo killed before its end (kill -9) left its second community active on the platform:
    # archive it first, or this run would start it again (with its own bots' clock ahead of ours)
    stale = await archive_stale_demo_communities(dsn)
    # one server, one group commit: the first community at the root, the second under /m/<id>/
    deployment = await start_deployment(dsn, settings, clock=clock)
    market, runner = deployment.market, deployment.runner
    rt = market.runtime
    console = Console(market, zone)
    rt.subscribers.append(console)
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    rng = random.Random(42)
    # Members are Ethereum key pairs (deterministic for the demo), registered like an operator does.
    keys = [Account.from_key(random.Random(f"demo-member-{i}").randbytes(32)) for i in range(members)]
    registry = runner.app[MEMBERS]
    bots = []
    for i, key in enumerate(keys):
        role = ROLES[i % len(ROLES)]
        await registry.create(MemberIn(address=key.address, name=f"member {i:03d}", role=role,
                                       export_capacity_w=10_000 if role != "consumer" else 0,
                                       retail_tariff_ticks=30_000, feed_in_tariff_ticks=8_000,
                                       collateral=50_000 * MONEY_UNITS_PER_EUR))
        bots.append(Bot(MemberId(key.address), role, random.Random(rng.random())))
    # With settlement on, each member's collateral is credited on chain (the operator's
    # on-ramp, SettlementRegistry.depositFor) and reaches the engine from there.
    worker = runner.app.get(_settlement_key()) if settings.settlement_enabled else None
    if settings.operator_token is None:
        raise ValueError("the demo needs an operator token (run_demo sets one)")
    token = settings.operator_token.get_secret_value()
    print(f"Voltbourse demo - market {settings.market_id}, {members} members, clock x{speed} "
          f"(starts {start.astimezone(zone):%Y-%m-%d %H:%M %Z}), rolling gate 60 min before delivery")
    if duration > 0:
        print(f"  runs {duration:g} s, then ends with a summary and its server stops (the links below with it); "
              f"until Ctrl-C: make demo DEMO_SECONDS=0 (voltbourse demo --duration 0)")
    else:
        print("  runs until Ctrl-C, then ends with a summary")
    print(f"  market data: {base}/api/products  {base}/api/market  {base}/api/trades  metrics {base}/metrics")
    print(f"  peers:       ws://{host}:{port}/ws (docs/websocket.md); a member key to try: 0x{keys[0].key.hex()}")
    print(f"  operator:    {base}/api/operator/... with 'Authorization: Bearer {token}' (docs/rest.md)")
    print(f"  operator page: {base}/operator  (log in with the token {token})")
    demo_key = settings.portal_demo_login.get_secret_value() if settings.portal_demo_login else None
    print(f"  member portal: {base}/portal  sign in with a browser wallet holding the member key "
          f"0x{keys[0].key.hex().removeprefix('0x')} ({keys[0].address})")
    if demo_key:
        print(f"    no wallet? demo-only link (refused outside the demo): "
              f"{base}/portal/demo-login?member={keys[0].address}&key={demo_key}")
    print(f"  journal:     PostgreSQL {dsn}  (tables journal, trades; market_id = '{settings.market_id}')")
    if stale:
        print(f"  archived the second community of an earlier demo, still active (killed, or resumed since): "
              f"{', '.join(stale)} "
              f"(data kept; POST {base}/api/platform/markets/<id>/resume starts one again)")
    if worker is not None:
        c = worker.chain
        print(f"  settlement:  {'in-process EVM' if c.is_in_process else settings.chain_rpc_url} chain {c.chain_id}, "
              f"SettlementRegistry {c.registry.address}, vEUR {c.token.address}; batches of up to "
              f"{worker.batch_size} trades or {worker.max_age_s:g} s; status {base}/api/operator/settlement")
    # The second community, side by side on the same server: its own rules (a day-ahead auction
    # at 12:00, then continuous trading until the rolling gate), members, bots, operator token
    second = await _second_community(deployment, settings, max(4, members // 2), rng)
    sb = second.base_path
    print(f"  second community {second.market_id} ({second.rules}): {base}{sb}/operator  (log in with its own "
          f"token {second.token}; the page's switcher lists both); peers ws://{host}:{port}{sb}/ws, a member key "
          f"to try: 0x{second.keys[0].key.hex().removeprefix('0x')}; market data {base}{sb}/api/products; "
          f"platform {base}/api/platform/markets")
    meters = DemoMeters(runner.app, [k.address for k in keys], settings.timezone)
    bill_from = -(-clock.now_us() // 3_600_000_000) * 3_600_000_000  # the first whole hour
    n_points = await meters.setup(bill_from - 86_400_000_000)
    print(f"  metering:    {n_points} metering points, tariff 'default', fees; the meters' week before the demo, then "
          f"the delivered quarter-hours' readings and interim bills every 20 s (the portal and the operator page show "
          f"them), the final bills at the end ({base}/api/operator/metering/...; docs/metering.md); in the portal's "
          f"'My agent', the prosumer strategy forecasts from that week")
    flex_task = None
    if flex_members := min(7, len(keys)):
        flex_task = asyncio.create_task(_flex_demo(runner.app, f"ws://{host}:{port}/ws", keys[:flex_members], clock))

    async def bot_loop(bot: Bot, runtime, pause: tuple[float, float]) -> None:
        while True:
            open_products = sorted((pb.product.start_us, pid) for pid, pb in runtime.engine.products.items()
                                   if pb.state.value == "open")
            if open_products:
                cmd = bot.next_command([pid for _, pid in open_products])
                res = await runtime.submit(cmd)
                first = command_outcome(res.events)
                if isinstance(first, OrderAccepted) and isinstance(cmd, PlaceOrder) and cmd.tif is TimeInForce.GTC:
                    bot.open.append(first.order_id)
            await asyncio.sleep(bot.rng.uniform(*pause))

    tasks = [asyncio.create_task(bot_loop(b, rt, (0.02, 0.2))) for b in bots]
    rt2 = second.market.runtime
    tasks += [asyncio.create_task(bot_loop(b, rt2, (0.05, 0.3))) for b in second.bots]
    t0 = time.monotonic()
    last = (t0, 0)
    last_meter = t0
    try:
        while duration <= 0 or time.monotonic() - t0 < duration:
            await asyncio.sleep(5)
            now = time.monotonic()
            rate = (rt.cmd_seq - last[1]) / (now - last[0])
            last = (now, rt.cmd_seq)
            print(f"  [{console.local(clock.now_us())}] {rate:6.0f} commands/s  {console.trades} trades  "
                  f"{console.energy / 1000:.1f} kWh  {len(rt.engine.orders)} open orders  seq {rt.committed_seq}",
                  flush=True)
            print(f"  {second.console.label}{second.console.trades} trades  "
                  f"{second.console.energy / 1000:.1f} kWh  {len(rt2.engine.orders)} open orders  "
                  f"seq {rt2.committed_seq}; group commit: {deployment.committer.groups} groups of both in "
                  f"{deployment.committer.commits} transactions", flush=True)
            if now - last_meter >= 20:
                last_meter = now
                try:
                    await meters.tick(bill_from, clock.now_us())
                except Exception as exc:  # noqa: BLE001 - the demo goes on without it
                    log.warning("metering demo tick failed: %s", exc)
            if worker is not None:
                st = await worker.status(limit=1)
                last_batch = st["batches"][0] if st["batches"] else None
                print(f"  [settlement] {worker.stats['batches_anchored']} batches anchored "
                      f"({worker.stats['trades_anchored']} trades), last batch "
                      + (f"#{last_batch['batch_id']} {last_batch['state']} in block {last_batch['block']} "
                         f"root {last_batch['root'][:18]}.." if last_batch else "-")
                      + f", {st['pending_trades']} trades waiting" + (f"  ALERT: {worker.alert}" if worker.alert else ""),
                      flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if flex_task is not None and not flex_task.done():
            flex_task.cancel()
            await asyncio.gather(flex_task, return_exceptions=True)
        try:
            await meters.finish(bill_from, clock.now_us(), base, token)
        except Exception as exc:  # noqa: BLE001 - the demo still ends with its summary
            log.warning("metering demo failed: %s", exc, exc_info=True)
        if worker is not None:
            await _settle_and_reconcile(market, worker)
            tenant = deployment.platform.tenants.get(second.market_id)
            worker2 = tenant.app.get(_settlement_key()) if tenant is not None and tenant.app is not None else None
            if worker2 is not None:  # the second community's own contracts: every trade of both reconciled
                await _settle_and_reconcile(second.market, worker2, f"  settlement of {second.market_id}: ")
        hash2 = second.market.engine.state_hash()
        # archived: its data stay, and the next demo or serve on this database does not start it
        await deployment.platform.archive(second.market_id)
        value = console.value // 10**8
        print(f"Done: {rt.cmd_seq} commands journaled, {console.trades} trades, {console.energy / 1000:.1f} kWh "
              f"worth {value} EUR; state hash {rt.engine.state_hash()[:16]}")
        print(f"  second community {second.market_id}: {rt2.cmd_seq} commands journaled, {second.console.trades} "
              f"trades, {second.console.energy / 1000:.1f} kWh; state hash {hash2[:16]} (archived on the platform: "
              f"POST /api/platform/markets/{second.market_id}/resume starts it again)")
        print(f"  replay it: VOLTBOURSE_MARKET_ID={settings.market_id} VOLTBOURSE_OPERATOR_TOKEN={token} "
              f"{_command()} serve  (recovers from the journal, under the rules stored with it; "
              f"on the wall clock its market time stays at the demo's last simulated time, "
              f"{console.local(clock.now_us())}, until real time passes it: a market's time never goes back)")
        print("  the demo's server has stopped; its journal and chain stay in the data directory "
              "(VOLTBOURSE_DATA_DIR; README, 'Starting afresh')")
        await deployment.close()
    return 0


#: The demo's second communities are ``<demo market id>-b``, the demo's market id ``demo-<UTC time>``.
DEMO_COMMUNITY_RE = r"^demo-[0-9]{14}-b$"


async def archive_stale_demo_communities(dsn: str) -> list[str]:
    """Archive the second communities of earlier demos that did not end (killed: a demo
    archives its own at the end): those still registered as running whose market no
    process runs (its single-writer lock is free). A demo running beside this one on the
    same database keeps its own. Their data stay. Returns their ids."""
    conn = await asyncpg.connect(dsn)
    try:
        out = []
        for r in await conn.fetch("SELECT market_id FROM platform_markets WHERE status <> 'archived' AND "
                                  "market_id ~ $1 ORDER BY market_id", DEMO_COMMUNITY_RE):
            mid = r["market_id"]
            key = "voltbourse:" + mid  # the runtime's single-writer lock (GroupCommitter.lock)
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
                continue  # another demo runs it
            try:
                await conn.execute("UPDATE platform_markets SET status = 'archived', updated_at = now() "
                                   "WHERE market_id = $1", mid)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
            out.append(mid)
        return out
    finally:
        await conn.close()


@dataclass
class SecondCommunity:
    market_id: str
    rules: str
    token: str
    base_path: str
    market: Market
    keys: list
    bots: list[Bot]
    console: Console


async def _second_community(deployment, settings: Settings, members: int, rng: random.Random) -> SecondCommunity:
    """Create the demo's second community on the platform and register its own members."""
    mid = f"{settings.market_id}-b"
    tenant, token = await deployment.platform.create(mid, "Second community", {
        "gate": "rolling", "gate_rolling_minutes": 30, "mechanism": "call_then_continuous"})
    if tenant.market is None or tenant.app is None:
        raise RuntimeError(f"the second community did not start: {tenant.error}")
    console = Console(tenant.market, settings.tz, label=f"[{mid}] ")
    tenant.market.runtime.subscribers.append(console)
    keys = [Account.from_key(random.Random(f"demo-b-member-{i}").randbytes(32)) for i in range(members)]
    registry = tenant.app[MEMBERS]
    bots = []
    for i, key in enumerate(keys):
        role = ROLES[(i + 1) % len(ROLES)]
        await registry.create(MemberIn(address=key.address, name=f"b-member {i:03d}", role=role,
                                       export_capacity_w=10_000 if role != "consumer" else 0,
                                       retail_tariff_ticks=28_000, feed_in_tariff_ticks=9_000,
                                       collateral=50_000 * MONEY_UNITS_PER_EUR))
        bots.append(Bot(MemberId(key.address), role, random.Random(rng.random())))
    return SecondCommunity(mid, "day-ahead auction at 12:00, then continuous until 30 min before delivery", token,
                           tenant.base_path, tenant.market, keys, bots, console)


def _settlement_key():

    return SETTLEMENT


async def _flex_demo(app, ws_url: str, keys: list, clock) -> None:
    """One demand-response event, from offers to revenue shares (exchange/flexibility)."""

    await asyncio.sleep(3)
    try:
        await run_flex_demo(app, ws_url, keys, clock)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the demo goes on without it
        log.warning("flexibility demo event failed: %s", exc, exc_info=True)


async def _settle_and_reconcile(market, worker, label: str = "Settlement: ") -> None:
    """Let the worker anchor what is left, then prove every trade is on chain."""

    deadline = time.monotonic() + worker.max_age_s + 20
    worker.wake()
    while time.monotonic() < deadline:
        if not await unsettled(market.pool, market.journal.market_id):
            break
        await asyncio.sleep(0.25)
    rep = await run_reconcile(worker)
    print(f"{label}{rep['anchored']} batches anchored on chain for {rep['trades']} trades "
          f"({rep['pending_trades']} pending); reconciliation {'OK' if rep['ok'] else 'FOUND DIFFERENCES'}")
    for d in rep["differences"][:10]:
        print("  -", d)


def _command() -> str:
    """How this command was run (``.venv/bin/voltbourse`` from ``make demo``), for a line to copy."""
    return sys.argv[0] if sys.argv and sys.argv[0].endswith("voltbourse") else "voltbourse"


def run_demo(settings: Settings, speed: int = 600, duration: float = 60.0, members: int = 24) -> int:
    market_id = f"demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
    token = settings.operator_token or SecretStr(secrets.token_urlsafe(16))
    # the member portal's demo-only sign-in link (no wallet needed), valid for this run only
    demo_login = settings.portal_demo_login or SecretStr(secrets.token_urlsafe(18))
    settings = settings.model_copy(update={"market_id": market_id, "gate": "rolling", "gate_rolling_minutes": 60,
                                           "clock": "sim", "sim_speed": speed, "operator_token": token,
                                           "portal_demo_login": demo_login,
                                           # the demo watches the worker itself (counts, credits, reconcile)
                                           "settlement_process": "inline"})
    with database(settings) as dsn:
        upgrade(dsn)
        try:
            return run_async(_demo(dsn, settings, speed, duration, members))
        except asyncio.CancelledError:  # SIGTERM: ended as Ctrl-C ends it
            return 130
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(f"voltbourse demo: {settings.host}:{settings.port} is in use (another demo or server?): stop it, "
                  f"or choose another port with VOLTBOURSE_PORT", file=sys.stderr)
            return 2

