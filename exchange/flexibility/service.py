"""The flexibility gateway service: state in memory, every change stored in PostgreSQL,
driven by a clock (``step(now)``), talking to members through a ``send(member, msg)``
callable and to the balancing market through a :class:`~.market.BalancingMarket`.

All decisions are the pure core's (``core/``); this module only sequences them in
time, stores what they produced and delivers the messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import asyncpg

from exchange.core.units import US_PER_MIN, iso
from exchange.flexibility.core import (
    CHECK_US,
    SLOT_US,
    CoreError,
    DeliveryKind,
    Direction,
    FlexConfig,
    FlexEvent,
    Instruction,
    MemberHistory,
    Offer,
    assess,
    flexibility_wh,
)
from exchange.flexibility.core.model import ceil_div
from exchange.flexibility.market import BalancingMarket, SimulatedBalancingMarket
from exchange.flexibility.store import FlexStore
from exchange.protocol.errors import VoltbourseError
from exchange.runtime.clock import Clock

log = logging.getLogger(__name__)

DAY_US = 24 * 60 * US_PER_MIN
FINAL_PHASES = ("settled", "no_bid", "not_activated", "not_viable", "interrupted", "failed")


#: how far ahead a member may declare its baseline
BASELINE_HORIZON_US = 31 * 24 * 3_600_000_000
#: how far back (the hour before an offer's period, as reference)
BASELINE_PAST_US = 24 * 3_600_000_000

class FlexError(VoltbourseError):
    """A refused member or operator request: ``code`` is the WS/REST error code."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(code, message, status=status)


class FlexService:
    def __init__(self, pool: asyncpg.Pool, market_id: str, clock: Clock, *, config: FlexConfig | None = None,
                 market: BalancingMarket | None = None, send: Callable[[str, dict], None] | None = None,
                 auto_events: bool = False, lead_minutes: int = 120, check_grace_s: int = 60,
                 on_change: Callable[[], None] | None = None) -> None:
        self.store = FlexStore(pool, market_id)
        self.market_id = market_id
        self.clock = clock
        self.config = config or FlexConfig()
        self.market = market or SimulatedBalancingMarket(0, granularity_w=self.config.rules.granularity_w)
        self.send = send or (lambda member, msg: None)
        self.auto_events = auto_events
        self.lead_us = lead_minutes * US_PER_MIN
        self.grace_us = check_grace_s * 1_000_000
        self.on_change = on_change
        self.offers: dict[int, Offer] = {}
        self.offer_status: dict[int, str] = {}
        self.baselines: dict[str, dict[int, tuple[int, int, str]]] = defaultdict(dict)  # member -> slot -> (c, g, src)
        self.meters: dict[str, dict[int, tuple[int, int, str]]] = defaultdict(dict)  # member -> interval -> (c, g, _)
        self.events: dict[int, FlexEvent] = {}
        self.viability: dict[int, dict] = {}
        self.assessed: set[tuple[int, str]] = set()
        self.history: dict[str, MemberHistory] = {}
        self.instructions: list[tuple[int, int, Instruction]] = []  # (instruction_id, event_id, instruction)
        self.payouts: list[dict] = []
        self.counters = {"offer": 0, "event": 0, "invitation": 0, "bid": 0, "instruction": 0, "payout": 0}
        self.stats: defaultdict[str, int] = defaultdict(int)  # for metrics
        self._pending_computed: list = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def load(self) -> None:
        st = self.store
        for o, status in await st.load_offers():
            self.offers[o.offer_id] = o
            self.offer_status[o.offer_id] = status
        self.baselines.update(await st.load_series("flex_baselines", "slot_start"))
        self.meters.update(await st.load_series("flex_meter", "interval_start"))
        self.counters.update(await st.counters())
        self.history = await st.history()
        n = await st.interrupt_open_events()
        if n:
            log.warning("flexibility: %d open event(s) of a previous run marked interrupted", n)

    def start(self, poll_s: float = 0.25) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.step()
                except Exception:  # noqa: BLE001 - keep serving; the error is logged
                    log.exception("flexibility step failed")
                await asyncio.sleep(poll_s)

        self._task = asyncio.get_running_loop().create_task(loop(), name="flexibility")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _next(self, name: str) -> int:
        self.counters[name] += 1
        return self.counters[name]

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001
                log.exception("flexibility change hook failed")

    # ------------------------------------------------------------------ member side
    async def declare_offer(self, member: str, period_start: int, period_end: int, direction: Direction, power_w: int,
                            price: int, kind: DeliveryKind, energy_wh: int | None = None) -> Offer:
        now = self.clock.now_us()
        if period_start % SLOT_US or period_end % SLOT_US or period_end <= period_start:
            raise FlexError("INVALID_PERIOD", "the period must start and end on quarter hours (UTC), end after start")
        if period_start <= now:
            raise FlexError("PERIOD_STARTED", f"the period starts at {iso(period_start)}, which is not in the future")
        o = Offer(self._next("offer"), member, period_start, period_end, direction, power_w, price, kind, energy_wh)
        await self.store.save_offer(o)
        self.offers[o.offer_id] = o
        self.offer_status[o.offer_id] = "open"
        self.stats["offers"] += 1
        self._changed()
        return o

    async def cancel_offer(self, member: str, offer_id: int) -> None:
        o = self.offers.get(offer_id)
        if o is None or o.member != member or self.offer_status.get(offer_id) != "open":
            raise FlexError("UNKNOWN_OFFER", f"no open offer {offer_id} of yours")
        if any(offer_id in ev.offers and any(i.offer_id == offer_id and i.status == "accepted"
                                             for i in ev.invitations.values())
               for ev in self.events.values() if ev.phase not in FINAL_PHASES):
            raise FlexError("OFFER_COMMITTED", f"offer {offer_id} is committed to an event")
        self.offer_status[offer_id] = "cancelled"
        await self.store.save_offer(o, "cancelled")
        self._changed()

    async def submit_baseline(self, member: str, slots: list[tuple[int, int, int]]) -> int:
        """A member's forecast: delivery is measured against it, so a slot is refused inside
        an event the member is invited to (raising it then would raise what the member is paid
        for after the fact), more than a day ago or :data:`BASELINE_HORIZON_US` ahead, or twice
        in one message."""
        now = self.clock.now_us()
        seen: set[int] = set()
        invited = [(ev.period_start, ev.period_end) for ev in self.events.values()
                   if any(i.member == member for i in ev.invitations.values())]
        for t, _, _ in slots:
            if t % SLOT_US:
                raise FlexError("INVALID_SLOT", f"baseline slot {iso(t)} is not on a quarter hour")
            if t < now - BASELINE_PAST_US:
                raise FlexError("INVALID_SLOT", f"baseline slot {iso(t)} is more than a day ago")
            if t > now + BASELINE_HORIZON_US:
                raise FlexError("INVALID_SLOT", f"baseline slot {iso(t)} is more than 31 days ahead")
            if t in seen:
                raise FlexError("INVALID_SLOT", f"baseline slot {iso(t)} is given twice")
            seen.add(t)
            if any(a <= t < b for a, b in invited):
                raise FlexError("INVALID_SLOT", f"baseline slot {iso(t)} is in an event you are invited to: its "
                                                "baseline is fixed")
        await self.store.save_series("flex_baselines", "slot_start", member, slots)
        for t, c, g in slots:
            self.baselines[member][t] = (c, g, "member")
        return len(slots)

    async def report_meter(self, member: str, readings: list[tuple[int, int, int]]) -> int:
        """What the member's meter measured: once per interval (a second value for it, in the
        same message or later, is refused: delivery is computed from it)."""
        now = self.clock.now_us()
        seen: set[int] = set()
        have = self.meters.get(member, {})
        for t, _, _ in readings:
            if t % CHECK_US:
                raise FlexError("INVALID_INTERVAL", f"meter interval {iso(t)} is not on a 10-minute boundary")
            if t + CHECK_US > now + self.grace_us:
                raise FlexError("INTERVAL_NOT_OVER", f"the interval starting {iso(t)} is not over yet")
            if t in seen or t in have:
                raise FlexError("INVALID_INTERVAL", f"meter interval {iso(t)} is reported already")
            seen.add(t)
        await self.store.save_series("flex_meter", "interval_start", member, readings)
        for t, c, g in readings:
            self.meters[member][t] = (c, g, "member")
        return len(readings)

    async def respond(self, member: str, invitation_id: int, accept: bool) -> dict:
        async with self._lock:
            ev = next((e for e in self.events.values() if invitation_id in e.invitations), None)
            if ev is None or ev.invitations[invitation_id].member != member:
                raise FlexError("UNKNOWN_INVITATION", f"no invitation {invitation_id} for you")
            now = self.clock.now_us()
            try:
                invites, calls = ev.respond(invitation_id, member, accept, now)
            except CoreError as exc:
                await self.store.save_event(ev)
                raise FlexError(exc.code, exc.message) from None
            self.counters["invitation"] = max(self.counters["invitation"], ev.next_invitation_id - 1)
            self.stats["accepted" if accept else "declined"] += 1
            await self._deliver(ev, invites, calls)
            await self.store.save_event(ev)
            self._changed()
            inv = ev.invitations[invitation_id]
            return {"invitation_id": invitation_id, "event_id": ev.event_id, "status": inv.status}

    # ------------------------------------------------------------------ baselines and viability
    def baseline_net(self, member: str, start: int, end: int) -> dict[int, int]:
        """Net baseline slots (consumption - generation) of ``member`` over [start, end);
        missing slots are computed from the member's meter readings of the previous
        days (mean of up to 5 same-time slots) and stored as ``computed``."""
        out = {}
        for s in range(start - start % SLOT_US, end, SLOT_US):
            v = self.baselines.get(member, {}).get(s)
            if v is None:
                v = self._computed_slot(member, s)
            if v is not None:
                out[s] = v[0] - v[1]
        return out

    def _computed_slot(self, member: str, s: int) -> tuple[int, int, str] | None:
        meters = self.meters.get(member)
        if not meters:
            return None
        cons = {t: c for t, (c, g, _) in meters.items()}
        gen = {t: g for t, (c, g, _) in meters.items()}
        days = []
        for k in range(1, 6):
            a, b = s - k * DAY_US, s - k * DAY_US + SLOT_US
            covered = sum(min(b, t + CHECK_US) - max(a, t) for t in cons if t < b and t + CHECK_US > a)
            if covered == SLOT_US:
                days.append((_energy_between(cons, a, b), _energy_between(gen, a, b)))
        if not days:
            return None
        v = (sum(d[0] for d in days) // len(days), sum(d[1] for d in days) // len(days), "computed")
        self.baselines[member][s] = v
        self._pending_computed.append((member, s, v))
        return v

    async def _store_computed(self) -> None:
        pending, self._pending_computed = self._pending_computed, []
        by_member = defaultdict(list)
        for member, s, (c, g, _) in pending:
            by_member[member].append((s, c, g))
        for member, rows in by_member.items():
            await self.store.save_series("flex_baselines", "slot_start", member, rows, source="computed")

    def open_offers(self, start: int, end: int, direction: Direction | None = None) -> list[Offer]:
        return [o for oid, o in sorted(self.offers.items()) if self.offer_status.get(oid) == "open"
                and o.period_start <= start and o.period_end >= end
                and (direction is None or o.direction is direction)]

    def assess_period(self, start: int, end: int) -> dict:
        members = set(self.baselines) | {o.member for o in self.open_offers(start, end)}
        cons = gen = 0
        for m in members:
            for s in range(start, end, SLOT_US):
                slot = self.baselines.get(m, {}).get(s) or self._computed_slot(m, s)
                if slot is not None:
                    cons += slot[0]
                    gen += slot[1]
        viability = assess(cons, gen, flexibility_wh(self.open_offers(start, end, Direction.UP), start, end))
        return viability.to_dict()

    # ------------------------------------------------------------------ events
    async def open_event(self, period_start: int, *, direction: Direction = Direction.UP, target_w: int | None = None,
                         origin: str = "operator", viability: dict | None = None) -> FlexEvent:
        async with self._lock:
            return await self._open_event(period_start, direction, target_w, origin, viability)

    async def _open_event(self, period_start, direction, target_w, origin, viability) -> FlexEvent:
        now = self.clock.now_us()
        rules = self.config.rules
        if period_start % SLOT_US:
            raise FlexError("INVALID_PERIOD", "the period must start on a quarter hour (UTC)", 422)
        end = period_start + rules.validity_minutes * US_PER_MIN
        bid_deadline = self.market.gate_us(period_start) - US_PER_MIN
        if now >= bid_deadline:
            raise FlexError("TOO_LATE", f"the balancing market's gate for {iso(period_start)} is at "
                                        f"{iso(self.market.gate_us(period_start))}; too late to invite and bid")
        if any(e.period_start == period_start and e.direction is direction and e.phase not in FINAL_PHASES
               for e in self.events.values()):
            raise FlexError("EVENT_EXISTS", f"an event for {iso(period_start)} ({direction.value}) is already open")
        viability = viability or self.assess_period(period_start, end)
        deficit_w = ceil_div(viability["deficit_wh"] * 60 * US_PER_MIN, end - period_start)
        config = self.config
        ev = FlexEvent(self._next("event"), period_start, end, direction, origin, config, target_w,
                       local_need_w=deficit_w if direction is Direction.UP else 0)
        invites = ev.start(self.open_offers(period_start, end, direction), self.history, now,
                           self.counters["invitation"] + 1, bid_deadline)
        self.counters["invitation"] = ev.next_invitation_id - 1
        self.events[ev.event_id] = ev
        self.viability[ev.event_id] = viability
        await self.store.save_event(ev, viability)
        await self._store_computed()
        await self._deliver(ev, invites, [])
        self.stats["events"] += 1
        log.info("flexibility event %d for %s opened (%s): %d invitations", ev.event_id, iso(period_start), origin,
                 len(invites))
        self._changed()
        return ev

    async def step(self) -> None:
        """Advance every open event to the clock's time (and, with ``auto_events``, open
        events for viable periods ``lead_minutes`` ahead)."""
        async with self._lock:
            now = self.clock.now_us()
            if self.auto_events:
                await self._scan(now)
            for ev in list(self.events.values()):
                if ev.phase not in FINAL_PHASES:
                    try:
                        await self._advance(ev, now)
                    except CoreError as exc:
                        ev.phase, ev.reason = "failed", f"{exc.code}: {exc.message}"
                        await self.store.save_event(ev)
                        self._changed()

    async def _scan(self, now: int) -> None:
        minutes = self.config.rules.validity_minutes * US_PER_MIN
        for start in sorted({o.period_start for o in self._all_open()}):
            if (start, "up") in self.assessed or now < start - self.lead_us:
                continue
            if now >= self.market.gate_us(start) - 2 * US_PER_MIN:
                continue  # too late for invitations and bids
            self.assessed.add((start, "up"))
            v = self.assess_period(start, start + minutes)
            if v["candidate"]:
                await self._open_event(start, Direction.UP, None, "auto", v)
            else:
                ev = FlexEvent(self._next("event"), start, start + minutes, Direction.UP, "auto", self.config, None,
                               phase="not_viable", reason=v["reason"])
                self.events[ev.event_id] = ev
                self.viability[ev.event_id] = v
                await self.store.save_event(ev, v)
                self._changed()

    def _all_open(self) -> list[Offer]:
        return [o for oid, o in self.offers.items() if self.offer_status.get(oid) == "open"]

    async def _advance(self, ev: FlexEvent, now: int) -> None:
        changed = False
        if ev.phase == "inviting":
            invites = ev.expire(now)
            self.counters["invitation"] = max(self.counters["invitation"], ev.next_invitation_id - 1)
            if invites:
                await self._deliver(ev, invites, [])
                changed = True
            if now >= ev.bid_deadline or (ev.invitations and ev.all_answered()):
                alloc = ev.build(self.counters["bid"] + 1)
                self.counters["bid"] += len(alloc.bids)
                self.stats["bids_built"] += len(alloc.bids)
                if alloc.bids:
                    results = await self.market.submit_bids(alloc.bids, now)
                    ev.bids_submitted({r.bid_id: (r.accepted, r.reason) for r in results})
                    self.stats["bids_submitted"] += sum(r.accepted for r in results)
                    for inv in ev.invitations.values():
                        if inv.status == "accepted":
                            self.send(inv.member, {"type": "flex_event", "event_id": ev.event_id, "phase": ev.phase,
                                                   "reason": ev.reason})
                else:
                    self.stats["no_bid"] += 1
                log.info("flexibility event %d: %d bid(s) %s %s", ev.event_id, len(alloc.bids),
                         [b.volume_w for b in alloc.bids], ev.reason)
                changed = True
        if ev.phase == "bidding" and now >= self.market.activation_known_us(ev.period_start):
            acts = await self.market.activations(ev.period_start, now)
            calls = ev.activate(acts)
            self.stats["activations"] += len(acts)
            self.stats["activated_w"] += sum(a.activated_w for a in acts)
            await self._deliver(ev, [], calls)
            changed = True
        while ev.phase == "delivering" and (t1 := ev.next_check()) is not None and now >= t1 + self.grace_us:
            recs, calls, invites = ev.check(self.baselines_for(ev), self._meter_net(), now)
            self.counters["invitation"] = max(self.counters["invitation"], ev.next_invitation_id - 1)
            await self.store.save_delivery(ev.event_id, recs)
            self.stats["delivered_wh"] += sum(max(0, r.delivered_wh) for r in recs)
            self.stats["shortfall_wh"] += sum(r.shortfall_wh for r in recs)
            self.stats["reserve_calls"] += len(calls)
            for r in recs:
                self.send(r.member, {"type": "flex_delivery", "event_id": ev.event_id, **_rec_json(r)})
            await self._deliver(ev, invites, calls)
            changed = True
        if ev.phase == "delivering" and ev.next_check() is None:
            await self._settle(ev)
            changed = True
        if changed:
            await self.store.save_event(ev)
            self._changed()

    def baselines_for(self, ev: FlexEvent) -> dict[str, dict[int, int]]:
        return {m: self.baseline_net(m, ev.period_start, ev.period_end) for m in {i.member for i in ev.instructions}}

    def _meter_net(self) -> dict[str, dict[int, int]]:
        return {m: {t: c - g for t, (c, g, _) in rows.items()} for m, rows in self.meters.items()}

    async def _settle(self, ev: FlexEvent) -> None:
        shares = ev.settle()
        for s in shares:
            h = self.history.setdefault(s.member, MemberHistory())
            h.participations += 1 if s.delivered_wh > 0 else 0
            h.delivered_wh += max(0, s.delivered_wh)
        for inv in ev.invitations.values():
            self.history.setdefault(inv.member, MemberHistory()).invitations += 1
        payouts = await self.store.save_settlement(ev, self.counters["payout"] + 1)
        self.counters["payout"] += len(payouts)
        self.stats["revenue_units"] += ev.gross
        self.stats["penalty_units"] += ev.penalty
        self.stats["payouts"] += len(payouts)
        for pid, member, amount in payouts:
            self.payouts.append({"payout_id": pid, "event_id": ev.event_id, "member": member, "amount_units": amount,
                                 "status": "pending"})
        for s in shares:
            self.send(s.member, {"type": "flex_payout", "event_id": ev.event_id, "delivered_wh": s.delivered_wh,
                                 "share": s.share, "penalty": s.penalty, "payout": s.payout})
        log.info("flexibility event %d settled: revenue %d, penalty %d, %d payouts", ev.event_id, ev.gross, ev.penalty,
                 len(payouts))

    async def _deliver(self, ev: FlexEvent, invites, calls: list[Instruction]) -> None:
        """Send invitations and dispatch instructions (after storing the instructions)."""
        if calls:
            rows = [(self._next("instruction"), c) for c in calls]
            await self.store.save_instructions(ev.event_id, rows)
            for n, c in rows:
                self.instructions.append((n, ev.event_id, c))
                self.send(c.member, {"type": "flex_dispatch", "event_id": ev.event_id, "instruction_id": n,
                                     "offer_id": c.offer_id, "bid_id": c.bid_id, "direction": ev.direction.value,
                                     "power_w": c.power_w, "start": iso(c.start), "end": iso(c.end),
                                     "energy_wh": c.energy_wh, "reserve": c.reserve})
        for inv in invites:
            self.stats["invitations"] += 1
            self.send(inv.member, {"type": "flex_invitation", "event_id": ev.event_id,
                                   "invitation_id": inv.invitation_id, "offer_id": inv.offer_id,
                                   "direction": ev.direction.value, "period_start": iso(ev.period_start),
                                   "period_end": iso(ev.period_end),
                                   "power_w": ev.offers[inv.offer_id].usable_power_w(ev.period_start, ev.period_end),
                                   "respond_by": iso(inv.respond_by), "reserve": inv.reserve, "rank": inv.rank})

    # ------------------------------------------------------------------ views (flat JSON, integers)
    def offers_view(self, member: str | None = None) -> list[dict]:
        return [offer_json(o, self.offer_status[oid]) for oid, o in sorted(self.offers.items())
                if member is None or o.member == member]

    def events_view(self) -> list[dict]:
        out = []
        for ev in sorted(self.events.values(), key=lambda e: e.event_id):
            v = self.viability.get(ev.event_id, {})
            out.append({"event_id": ev.event_id, "period_start": iso(ev.period_start), "period_end": iso(ev.period_end),
                        "direction": ev.direction.value, "origin": ev.origin, "phase": ev.phase, "reason": ev.reason,
                        "target_w": ev.target_w, "consumption_wh": v.get("consumption_wh"),
                        "generation_wh": v.get("generation_wh"), "flexibility_wh": v.get("flexibility_wh"),
                        "viable": v.get("candidate"),
                        "invitations": len(ev.invitations),
                        "accepted": sum(i.status == "accepted" for i in ev.invitations.values()),
                        "declined": sum(i.status == "declined" for i in ev.invitations.values()),
                        "bids": len(ev.allocation.bids) if ev.allocation else 0,
                        "no_bid_reasons": [f"{n.reason}: {n.detail}" for n in ev.allocation.no_bids]
                        if ev.allocation else [],
                        "activated_w": sum(a.activated_w for a in ev.activations), "shortfall_wh": ev.shortfall_wh,
                        "revenue_units": ev.gross, "penalty_units": ev.penalty})
        return out

    def invitations_view(self, event_id: int | None = None, member: str | None = None) -> list[dict]:
        return [{**i.to_dict(), "event_id": ev.event_id, "invited_at": iso(i.invited_at),
                 "respond_by": iso(i.respond_by)}
                for ev in sorted(self.events.values(), key=lambda e: e.event_id)
                if event_id in (None, ev.event_id) for i in ev.invitations.values() if member in (None, i.member)]

    def bids_view(self, event_id: int | None = None) -> list[dict]:
        out = []
        for ev in sorted(self.events.values(), key=lambda e: e.event_id):
            if ev.allocation is None or event_id not in (None, ev.event_id):
                continue
            acts = {a.bid_id: a for a in ev.activations}
            for b in ev.allocation.bids:
                a = acts.get(b.bid_id)
                out.append({"bid_id": b.bid_id, "event_id": ev.event_id, "product": b.product,
                            "direction": b.direction.value, "volume_w": b.volume_w, "price": b.price,
                            "covered_w": b.covered_w, "offers": len(b.portions), "divisible": b.divisible,
                            "validity_start": iso(b.validity_start), "validity_end": iso(b.validity_end),
                            "status": ev.bid_status.get(b.bid_id), "activated_w": a.activated_w if a else 0,
                            "activation_price": a.price if a else None})
        return out

    def activations_view(self, event_id: int | None = None, member: str | None = None) -> list[dict]:
        return [{"instruction_id": n, "event_id": e, "member": i.member, "offer_id": i.offer_id, "bid_id": i.bid_id,
                 "power_w": i.power_w, "start": iso(i.start), "end": iso(i.end), "energy_wh": i.energy_wh,
                 "reserve": i.reserve} for n, e, i in self.instructions
                if event_id in (None, e) and member in (None, i.member)]

    def delivery_view(self, event_id: int | None = None, member: str | None = None) -> list[dict]:
        return [{"event_id": ev.event_id, **_rec_json(r)} for ev in sorted(self.events.values(), key=lambda e: e.event_id)
                if event_id in (None, ev.event_id) for r in ev.delivery if member in (None, r.member)]

    def shares_view(self, event_id: int | None = None, member: str | None = None) -> list[dict]:
        return [{"event_id": ev.event_id, "member": s.member, "rule": ev.config.share_rule.value,
                 "delivered_wh": s.delivered_wh, "weight": s.weight, "share_units": s.share,
                 "penalty_units": s.penalty, "payout_units": s.payout}
                for ev in sorted(self.events.values(), key=lambda e: e.event_id)
                if event_id in (None, ev.event_id) for s in ev.shares if member in (None, s.member)]

    def snapshot(self) -> dict:
        return {"offers": self.offers_view(), "events": self.events_view(), "bids": self.bids_view(),
                "activations": self.activations_view(), "delivery": self.delivery_view(),
                "shares": self.shares_view()}


def _energy_between(series: dict[int, int], a: int, b: int) -> int:
    """Energy of 10-minute readings over [a, b) (linear inside an interval)."""
    total = 0
    for t, wh in series.items():
        lo, hi = max(a, t), min(b, t + CHECK_US)
        if hi > lo:
            total += wh * (hi - lo) // CHECK_US
    return total


def offer_json(o: Offer, status: str) -> dict:
    return {"offer_id": o.offer_id, "member": o.member, "period_start": iso(o.period_start),
            "period_end": iso(o.period_end), "direction": o.direction.value, "power_w": o.power_w,
            "energy_wh": o.energy_wh, "price": o.price, "kind": o.kind.value, "status": status}


def _rec_json(r) -> dict:
    return {"member": r.member, "interval_start": iso(r.interval_start), "interval_end": iso(r.interval_end),
            "required_wh": r.required_wh, "baseline_wh": r.baseline_wh, "metered_wh": r.metered_wh,
            "delivered_wh": r.delivered_wh, "shortfall_wh": r.shortfall_wh, "over_wh": r.over_wh}

