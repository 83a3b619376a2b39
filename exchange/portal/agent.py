"""The managed trading agent the platform runs for members who delegated to it (the portal's
"My agent"). One asyncio task per active delegation, in the exchange process: every
``period_s`` it looks at the open products (the next few), asks the rules
(:mod:`exchange.portal.agent_rules`) what to rest, checks every order against the signed
limits and submits it to the market's runtime as a ``PlaceOrder`` carrying the delegation's
id: the engine journals an ``order_delegated`` event with it, so the journal (and every
replay) shows which orders the agent placed under which delegation. Revoking stops the task
and cancels the agent's resting orders at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import CancelOrder, OrderAccepted, PlaceOrder, Side
from exchange.core.units import from_us
from exchange.portal.agent_rules import Limits, check_order, wanted
from exchange.portal.store import PortalStore
from exchange.runtime.market import MarketRuntime, MarketUnavailable

log = logging.getLogger(__name__)

#: how many of the next open products the agent trades in
PRODUCTS_AHEAD = 4


@dataclass
class AgentRun:
    member: str
    delegation_id: str
    limits: Limits
    orders: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)  # oid -> (product, side, price, qty)
    spent: dict[date, int] = field(default_factory=dict)  # money units of buys placed per local day
    placed: int = 0
    refused: int = 0
    task: asyncio.Task | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class AgentHost:
    def __init__(self, runtime: MarketRuntime, store: PortalStore, tz: ZoneInfo, period_s: float = 1.0) -> None:
        self.runtime = runtime
        self.store = store
        self.tz = tz
        self.period_s = period_s
        self.runs: dict[str, AgentRun] = {}

    async def enable(self, member: str, delegation_id: str, limits: Limits) -> AgentRun:
        """Run the agent for ``member`` under this delegation (a previous run stops first). What
        it placed before (a restart, an earlier delegation) is remembered: the orders still
        resting and today's spending."""
        old = self.runs.pop(member, None)
        if old is not None:
            await self._halt(old)
        run = AgentRun(member, delegation_id, limits)
        today = self.today()
        earlier: dict[int, tuple[str, str, int, int]] = {}
        for r in await self.store.agent_orders(member, since_day=None):
            if r["delegation_id"] == delegation_id:
                earlier[r["order_id"]] = (r["product_id"], r["side"], r["price"], r["quantity"])
            else:  # placed under an earlier delegation: cancelled below (its limits no longer hold)
                run.orders[r["order_id"]] = (r["product_id"], r["side"], r["price"], r["quantity"])
            if r["side"] == "buy" and r["local_day"] == today:
                run.spent[today] = run.spent.get(today, 0) + r["price"] * r["quantity"]
        await self._cancel_all(run)
        run.orders = earlier
        run.orders = self.live_orders(run)
        run.task = asyncio.create_task(self._loop(run), name=f"agent-{member[:10]}")
        self.runs[member] = run
        return run

    async def disable(self, member: str) -> int:
        """Stop the member's agent and cancel its resting orders; how many were cancelled."""
        run = self.runs.pop(member, None)
        if run is None:
            return 0
        await self._halt(run)
        return await self._cancel_all(run)

    async def _halt(self, run: AgentRun) -> None:
        """Stop the run's task between two orders (never in the middle of placing one: an order
        the engine accepted is always remembered, so it can be cancelled)."""
        run.stopping.set()
        if run.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.task), 30)
            except TimeoutError:
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task

    async def stop(self) -> None:
        await asyncio.gather(*(self._halt(r) for r in self.runs.values()), return_exceptions=True)
        self.runs.clear()

    def today(self) -> date:
        """The community's local date by the market's clock."""
        return from_us(self.runtime.engine.now).astimezone(self.tz).date()

    def live_orders(self, run: AgentRun) -> dict[int, tuple[str, str, int, int]]:
        engine = self.runtime.engine
        return {oid: o for oid, o in run.orders.items() if oid in engine.orders}

    async def _cancel_all(self, run: AgentRun) -> int:
        n = 0
        for oid in list(self.live_orders(run)):
            try:
                await self.runtime.submit(CancelOrder(0, MemberId(run.member), OrderId(oid)))
                n += 1
            except MarketUnavailable:
                break
        run.orders.clear()
        return n

    async def _loop(self, run: AgentRun) -> None:
        while not run.stopping.is_set():
            try:
                await self.step(run)
            except asyncio.CancelledError:
                raise
            except MarketUnavailable:
                return
            except Exception:  # the agent must never take the market down
                log.exception("agent of %s failed a step", run.member)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stopping.wait(), self.period_s)

    async def step(self, run: AgentRun) -> None:
        """One round: rest what the rules want in the next open products, within the limits."""
        engine = self.runtime.engine
        now_us = engine.now
        now_s = now_us // 1_000_000
        if now_s >= run.limits.expiry:
            await self._cancel_all(run)
            return
        run.orders = self.live_orders(run)
        excluded = run.limits.excluded_hours
        open_products = [(start_us, pid, hour) for start_us, pid in sorted(
            (pb.product.start_us, pid) for pid, pb in engine.products.items() if pb.state.value == "open")
            if (hour := from_us(start_us).astimezone(self.tz).hour) not in excluded][:PRODUCTS_AHEAD]
        today = from_us(now_us).astimezone(self.tz).date()
        for _, pid, hour in open_products:
            resting: dict[str, int] = {}
            for p, side, _, qty in run.orders.values():
                if p == pid:
                    resting[side] = resting.get(side, 0) + qty
            for side, price, qty in wanted(run.limits, resting, hour):
                if run.stopping.is_set():
                    return
                why = check_order(run.limits, side, price, qty, hour, now_s, run.spent.get(today, 0))
                if why is not None:
                    run.refused += 1
                    continue
                res = await self.runtime.submit(PlaceOrder(0, MemberId(run.member), ProductId(pid),
                                                           Side(side), price, qty, delegation=run.delegation_id))
                accepted = next((e for e in res.events if isinstance(e, OrderAccepted)), None)
                if accepted is None:
                    run.refused += 1
                    continue
                run.placed += 1
                if side == "buy":
                    run.spent[today] = run.spent.get(today, 0) + price * qty
                await self.store.agent_order(accepted.order_id, run.member, run.delegation_id, pid, side, price, qty,
                                             today)
                if accepted.order_id in engine.orders:
                    run.orders[accepted.order_id] = (pid, side, price, qty)
