"""A demand-response event for ``voltbourse demo``: flexibility bots connect over the
WebSocket API, declare baselines and offers, the operator opens an event, the
simulated balancing market activates the pooled bid, bots deliver (one partly),
reserves are called and the revenue is shared as pending payouts.

``await run_flex_demo(app, ws_url, keys, clock)`` — the lead's demo calls it with
the running app, its WebSocket URL, a few member keys and the (simulated) clock.
"""

from __future__ import annotations

import asyncio
import logging

from clients.bots.flex_bot import FlexBot
from clients.sdk.client import VoltbourseClient
from exchange.core.units import US_PER_MIN, eur, from_us, iso
from exchange.flexibility.core import FlexConfig, ProductRules
from exchange.flexibility.market import SimulatedBalancingMarket
from exchange.flexibility.plugin import FLEX
from exchange.flexibility.service import FINAL_PHASES

log = logging.getLogger(__name__)
H = 60 * US_PER_MIN


async def run_flex_demo(app, ws_url: str, keys: list, clock, *, seed: int = 7, power_w: int = 250_000,
                        timeout_s: float = 120.0, out=print) -> dict:
    """Run one event from offers to revenue shares; returns the event's operator view."""

    flex = app[FLEX]
    flex.market = SimulatedBalancingMarket(seed=seed, force_activation=True)
    flex.config = FlexConfig(rules=ProductRules(), reserve_margin_ppm=100_000)
    flex.grace_us = 2 * US_PER_MIN
    now = clock.now_us()
    period = (now + 40 * US_PER_MIN + H - 1) // H * H
    clients, bots = [], []
    try:
        for i, k in enumerate(keys):
            c = VoltbourseClient(ws_url, k, reconnect=False)
            await c.connect()
            clients.append(c)
            bots.append(FlexBot(c, seed=seed * 100 + i, power_w=power_w + 25_000 * (i % 3), price=6_000 + 400 * i,
                                consumption_wh_per_slot=150_000, delivery_ppm=450_000 if i == 1 else 1_000_000,
                                accept_ppm=0 if i == 2 else 1_000_000))
        start = from_us(period)
        for b in bots:
            await b.declare(start)
        total = sum(b.power_w for b in bots)
        out(f"  [flex] {len(bots)} members offered {total / 1e6:.2f} MW of upward flexibility for {iso(period)}")
        ev = await flex.open_event(period, target_w=1_000_000)
        out(f"  [flex] event {ev.event_id} opened by the operator: {len(ev.invitations)} invitations in rank order")
        reported: set[int] = set()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        shown = set()
        while ev.phase not in FINAL_PHASES and loop.time() < end:
            now = clock.now_us()
            for k in range(6):
                t0 = period + k * 10 * US_PER_MIN
                if t0 not in reported and now >= t0 + 10 * US_PER_MIN:
                    reported.add(t0)
                    await asyncio.gather(*(b.report(from_us(t0)) for b in bots if b.instructions))
            if ev.phase not in shown:
                shown.add(ev.phase)
                if ev.phase == "bidding" and ev.allocation:
                    for b in ev.allocation.bids:
                        out(f"  [flex] bid {b.bid_id}: {b.volume_w / 1e6:.1f} MW at {b.price / 100:.2f} EUR/MWh, "
                            f"backed by {b.covered_w} W from {len(b.portions)} offers")
                if ev.phase == "delivering":
                    for a in ev.activations:
                        out(f"  [flex] activated {a.activated_w / 1e6:.1f} MW at {a.price / 100:.2f} EUR/MWh; "
                            f"{len(ev.instructions)} dispatch instructions")
            await asyncio.sleep(0.05)
        # a settled event's shares and payouts are written just after its phase changes: wait for them
        while (ev.phase == "settled" and any(s.payout for s in ev.shares) and loop.time() < end
               and not any(p["event_id"] == ev.event_id for p in flex.payouts)):
            await asyncio.sleep(0.05)
        reserves = sum(1 for i in ev.instructions if i.reserve)
        out(f"  [flex] event {ev.event_id}: {ev.phase} {ev.reason}; shortfall {ev.shortfall_wh} Wh, "
            f"{reserves} reserve call(s); revenue {eur(ev.gross):.8f} EUR, penalty {eur(ev.penalty):.8f} EUR")
        for s in ev.shares:
            out(f"  [flex]   {s.member[:10]}… delivered {s.delivered_wh:>7} Wh  share {eur(s.share):>12.8f} EUR  "
                f"penalty {eur(s.penalty):>10.8f} EUR  payout {eur(s.payout):>12.8f} EUR")
        out("  [flex] operator: /api/operator/flexibility/events/"
            f"{ev.event_id}  (payouts go on chain through the settlement worker: settlePayouts)")
        return next(e for e in flex.events_view() if e["event_id"] == ev.event_id)
    finally:
        for c in clients:
            await c.close()


