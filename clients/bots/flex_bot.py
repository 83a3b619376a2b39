"""A flexibility bot: declares a baseline and offers, accepts (most) invitations, and
reports meter readings that deliver all or part of what it was dispatched (seeded).

The meter reading of a 10-minute interval is the bot's baseline over the interval
(linear inside the 15-minute slots, as the gateway computes it) minus
``delivery_ppm`` of the energy its instructions require in it (``up``)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from clients.sdk.client import VoltbourseClient
from clients.sdk.flex import FlexClient

SLOT = timedelta(minutes=15)
CHECK = timedelta(minutes=10)
PPM = 1_000_000


def _us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


def _parse(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class FlexBot:
    def __init__(self, client: VoltbourseClient, seed: int, *, power_w: int, price: int, consumption_wh_per_slot: int,
                 delivery_ppm: int = PPM, accept_ppm: int = PPM, kind: str = "reduction") -> None:
        self.flex = FlexClient(client)
        self.rng = random.Random(seed)
        self.power_w = power_w
        self.price = price
        self.consumption = consumption_wh_per_slot
        self.delivery_ppm = delivery_ppm
        self.accept_ppm = accept_ppm
        self.kind = kind
        self.baseline_slots: dict[int, int] = {}
        self.instructions: list[dict] = []
        self.invitations: list[dict] = []
        self.payouts: list[dict] = []
        self.answers: list[asyncio.Task] = []
        self.flex.on_invitation(self._invited)
        self.flex.on_dispatch(self.instructions.append)
        self.flex.on_payout(self.payouts.append)

    def _invited(self, inv: dict) -> None:
        self.invitations.append(inv)
        accept = self.rng.randrange(PPM) < self.accept_ppm
        self.answers.append(asyncio.ensure_future(self.flex.respond(inv["invitation_id"], accept)))

    async def settle_answers(self) -> list:
        done = await asyncio.gather(*self.answers, return_exceptions=True)
        self.answers.clear()
        return done

    async def declare(self, period_start: datetime, minutes: int = 60) -> dict:
        """Baseline for the period's slots (plus the hour before), then one ``up`` offer."""
        slots = []
        t = period_start - timedelta(hours=1)
        while t < period_start + timedelta(minutes=minutes):
            wh = self.consumption + self.rng.randrange(0, max(1, self.consumption // 20))
            slots.append((t, wh, 0))
            self.baseline_slots[_us(t)] = wh
            t += SLOT
        await self.flex.baseline(slots)
        return await self.flex.offer(period_start, "up", power_w=self.power_w, price=self.price,
                                     period_minutes=minutes, kind=self.kind)

    def _baseline_between(self, a: int, b: int) -> int:
        def cum(x: int) -> int:
            slot = 15 * 60 * 1_000_000
            return sum(wh if x >= s + slot else (wh * (x - s) // slot if x > s else 0)
                       for s, wh in self.baseline_slots.items())
        return cum(b) - cum(a)

    def required_wh(self, a: int, b: int) -> int:
        total = 0
        for i in self.instructions:
            s, e = max(a, _us(_parse(i["start"]))), min(b, _us(_parse(i["end"])))
            if e > s:
                total += i["power_w"] * (e - s) // 3_600_000_000
        return total

    async def report(self, interval_start: datetime) -> int:
        a = _us(interval_start)
        b = a + 10 * 60 * 1_000_000
        delivered = self.required_wh(a, b) * self.delivery_ppm // PPM
        metered = max(0, self._baseline_between(a, b) - delivered)
        await self.flex.meter([(interval_start, metered, 0)])
        return metered
