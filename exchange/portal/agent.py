"""The managed trading agent the platform runs for members who delegated to it (the portal's
"My agent"). One asyncio task per active delegation, in the exchange process: every
``period_s`` it builds what it sees of the market (:class:`~exchange.portal.agent_rules.AgentView`:
the listed products, the member's positions, its forecast from the outlook sources), asks
the delegation's strategy for the orders it wants resting, brings them within the signed
limits, cancels what no longer fits and submits the rest to the market's runtime as
``PlaceOrder`` commands carrying the delegation's id: the engine journals an
``order_delegated`` event with it, so the journal (and every replay) shows which orders the
agent placed under which delegation. Revoking stops the task and cancels the agent's resting
orders at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import CancelOrder, OrderAccepted, PlaceOrder, Rejected, Side
from exchange.core.units import from_us
from exchange.portal.agent_rules import (
    AgentStrategy,
    AgentView,
    Expectation,
    Limits,
    Slot,
    StrategyFactory,
    budget_cost,
    changes,
    check_order,
    fit,
    strategies,
)
from exchange.portal.store import PortalStore
from exchange.runtime.market import MarketRuntime, MarketUnavailable
from exchange.runtime.ports import OutlookSource

log = logging.getLogger(__name__)

#: the member's forecast is asked for again after this long (or when new products are listed)
OUTLOOK_TTL_S = 300.0


@dataclass
class AgentRun:
    member: str
    delegation_id: str
    limits: Limits
    strategy: AgentStrategy
    orders: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)  # oid -> (product, side, price, qty)
    spent: dict[date, int] = field(default_factory=dict)  # money units of buys placed per local day
    placed: int = 0
    refused: int = 0
    task: asyncio.Task | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    expect: dict[str, Expectation] = field(default_factory=dict)  # product id -> forecast
    expect_at: float = float("-inf")  # when (monotonic) the forecast was last asked for
    expect_asked: frozenset[str] = frozenset()  # the products it was asked for then
    note: str | None = None  # why the agent rests nothing, in plain words (None: it trades)
    refusals_in_a_row: int = 0  # orders the market refused since the last one it accepted
    paused_until: float = 0.0  # (monotonic) after a refusal: what fails now fails the next second too


#: the longest the agent waits after the market refused its orders, before it tries again
MAX_REFUSAL_PAUSE_S = 300


class AgentHost:
    def __init__(self, runtime: MarketRuntime, store: PortalStore, tz: ZoneInfo, period_s: float = 1.0, *,
                 planners: Mapping[str, StrategyFactory] | None = None,
                 outlook_sources: list[OutlookSource] | None = None) -> None:
        self.runtime = runtime
        self.store = store
        self.tz = tz
        self.period_s = period_s
        #: strategy name -> factory: ``limits`` plus what the composition root supplied
        self.strategies = strategies(planners)
        #: who forecasts members' grid exchange (metering); read at every refresh, so a
        #: subsystem that registers after the portal started is still used
        self.outlook_sources = outlook_sources if outlook_sources is not None else []
        self.runs: dict[str, AgentRun] = {}

    async def enable(self, member: str, delegation_id: str, limits: Limits) -> AgentRun:
        """Run the agent for ``member`` under this delegation (a previous run stops first). What
        it placed before (a restart, an earlier delegation) is remembered: the orders still
        resting and today's spending."""
        old = self.runs.pop(member, None)
        if old is not None:
            await self._halt(old)
        factory = self.strategies.get(limits.strategy)
        if factory is None:
            raise ValueError(f"this deployment does not run the {limits.strategy!r} strategy")
        run = AgentRun(member, delegation_id, limits, factory(limits))
        today = self.today()
        earlier: dict[int, tuple[str, str, int, int]] = {}
        for r in await self.store.agent_orders(member, since_day=None):
            if r["delegation_id"] == delegation_id:
                earlier[r["order_id"]] = (r["product_id"], r["side"], r["price"], r["quantity"])
            else:  # placed under an earlier delegation: cancelled below (its limits no longer hold)
                run.orders[r["order_id"]] = (r["product_id"], r["side"], r["price"], r["quantity"])
            if r["local_day"] == today:
                run.spent[today] = run.spent.get(today, 0) + budget_cost(r["side"], r["price"], r["quantity"])
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

    async def _refresh_expectations(self, run: AgentRun, slots: list[tuple[str, int, int]]) -> None:
        """Ask the outlook sources for the member's forecast of the listed products when new
        ones were listed or the last answer is older than OUTLOOK_TTL_S."""
        fresh = time.monotonic() - run.expect_at < OUTLOOK_TTL_S
        if fresh and all(pid in run.expect_asked for pid, _, _ in slots):
            return  # (a member without a forecast is not asked again every round)
        run.expect_at = time.monotonic()
        run.expect_asked = frozenset(pid for pid, _, _ in slots)
        intervals = [(start, end) for _, start, end in slots]
        for source in self.outlook_sources:
            got = await source.outlook(run.member, intervals, self.runtime.engine.now)
            if got is not None:
                run.expect = {pid: Expectation(o["import_wh"], o["export_wh"], o["history_days"], o["import_price"],
                                               o["feed_in_price"]) for (pid, _, _), o in zip(slots, got)}
                return
        run.expect = {}

    async def view(self, run: AgentRun) -> AgentView:
        """What the agent sees now: every listed product not yet delivered, in delivery order."""
        engine = self.runtime.engine
        now = engine.now
        listed = sorted((pb.product.start_us, pid, pb) for pid, pb in engine.products.items()
                        if pb.product.end_us > now)
        await self._refresh_expectations(run, [(pid, pb.product.start_us, pb.product.end_us)
                                               for _, pid, pb in listed])
        member = MemberId(run.member)
        slots = []
        for start, pid, pb in listed:
            local = from_us(start).astimezone(self.tz)
            bought, sold, _ = engine.position(pid, member)
            slots.append(Slot(pid, start, pb.product.end_us, pb.product.gate_us, local.date(), local.hour,
                              pb.state.value == "open" and local.hour not in run.limits.excluded_hours,
                              pb.ref_price, pb.book.best_bid(), pb.book.best_ask(), bought, sold,
                              run.expect.get(pid)))
        return AgentView(now, tuple(slots))

    async def step(self, run: AgentRun) -> None:
        """One round: exactly what the strategy wants (within the limits) rests in every
        tradable product; what no longer fits is cancelled first."""
        engine = self.runtime.engine
        now_us = engine.now
        now_s = now_us // 1_000_000
        if now_s >= run.limits.expiry:
            await self._cancel_all(run)
            return
        if time.monotonic() < run.paused_until:  # backing off after the market refused its orders
            return
        run.orders = self.live_orders(run)
        view = await self.view(run)
        target = run.strategy.plan(view)
        run.note = run.strategy.status()
        today = from_us(now_us).astimezone(self.tz).date()
        max_value = engine.config.controls.max_order_value  # the market refuses an order worth more
        for slot in view.slots:
            if not slot.tradable:
                continue
            pid = slot.product_id
            resting = {oid: (side, price, engine.orders[OrderId(oid)].remaining)
                       for oid, (p, side, price, _) in run.orders.items() if p == pid and oid in engine.orders}
            cancel, place = changes(fit(run.limits, target.get(pid, []), max_value), resting)
            for oid in cancel:
                if run.stopping.is_set():
                    return
                await self.runtime.submit(CancelOrder(0, MemberId(run.member), OrderId(oid)))
                run.orders.pop(oid, None)
            for side, price, qty in place:
                if run.stopping.is_set():
                    return
                why = check_order(run.limits, side, price, qty, slot.local_hour, now_s, run.spent.get(today, 0))
                if why is not None:
                    run.refused += 1
                    continue
                res = await self.runtime.submit(PlaceOrder(0, MemberId(run.member), ProductId(pid),
                                                           Side(side), price, qty, delegation=run.delegation_id))
                accepted = next((e for e in res.events if isinstance(e, OrderAccepted)), None)
                if accepted is None:
                    # the market refused it (its collateral, an order-value cap...): so it would the
                    # next round; wait, longer each time (2 s, 4 s ... 5 min), instead of re-sending
                    run.refused += 1
                    run.refusals_in_a_row += 1
                    wait = min(2 ** run.refusals_in_a_row, MAX_REFUSAL_PAUSE_S)
                    run.paused_until = time.monotonic() + wait
                    reason = next((e.reason for e in res.events if isinstance(e, Rejected)), None)
                    run.note = (f"the market refused the agent's last order ({reason or 'refused'}); it tries again "
                                f"in {wait} s")
                    return
                run.refusals_in_a_row = 0
                run.placed += 1
                run.spent[today] = run.spent.get(today, 0) + budget_cost(side, price, qty)
                await self.store.agent_order(accepted.order_id, run.member, run.delegation_id, pid, side, price, qty,
                                             today)
                if accepted.order_id in engine.orders:
                    run.orders[accepted.order_id] = (pid, side, price, qty)
