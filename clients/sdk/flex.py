"""Flexibility (demand response) for SDK clients: declare offers and baselines, receive
invitations and dispatch instructions, accept/decline, report meter values.

    from clients.sdk.client import VoltbourseClient
    from clients.sdk.flex import FlexClient

    async with VoltbourseClient(url, key) as c:
        flex = FlexClient(c)
        flex.on_invitation(lambda inv: flex.respond(inv["invitation_id"], True))
        await flex.baseline([(slot_start, 4_000, 0), ...])           # Wh per 15 min
        offer = await flex.offer(period_start, "up", power_w=250_000, price=9_000)

Times are aware ``datetime`` objects (or ISO strings); integers everywhere else
(W, Wh, ticks of 0.01 EUR/MWh, money units of 1e-8 EUR). See docs/flexibility.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from clients.sdk.client import VoltbourseClient


def _iso(t: datetime | str) -> str:
    if isinstance(t, str):
        return t
    if t.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return t.isoformat().replace("+00:00", "Z")


class FlexClient:
    def __init__(self, client: VoltbourseClient) -> None:
        self.client = client

    async def offer(self, period_start: datetime | str, direction: str, *, power_w: int, price: int,
                    period_minutes: int = 60, energy_wh: int | None = None, duration_minutes: int | None = None,
                    kind: str = "reduction") -> dict:
        msg: dict[str, Any] = {"type": "flex_offer", "period_start": _iso(period_start),
                               "period_minutes": period_minutes, "direction": direction, "power_w": power_w,
                               "price": price, "kind": kind}
        if energy_wh is not None:
            msg["energy_wh"] = energy_wh
        if duration_minutes is not None:
            msg["duration_minutes"] = duration_minutes
        return (await self.client.request(msg))["offer"]

    async def cancel(self, offer_id: int) -> dict:
        return await self.client.request({"type": "flex_offer_cancel", "offer_id": offer_id})

    async def baseline(self, slots: Sequence[tuple[datetime | str, int, int]]) -> int:
        """(slot start, consumption Wh, generation Wh) per 15-minute slot."""
        return (await self.client.request({"type": "flex_baseline", "slots": [
            {"start": _iso(t), "consumption_wh": c, "generation_wh": g} for t, c, g in slots]}))["slots"]

    async def meter(self, readings: Sequence[tuple[datetime | str, int, int]]) -> int:
        """(interval start, consumption Wh, generation Wh) per 10-minute interval."""
        return (await self.client.request({"type": "flex_meter", "readings": [
            {"interval_start": _iso(t), "consumption_wh": c, "generation_wh": g} for t, c, g in readings]}))["readings"]

    async def respond(self, invitation_id: int, accept: bool) -> dict:
        return await self.client.request({"type": "flex_respond", "invitation_id": invitation_id, "accept": accept})

    async def status(self) -> dict:
        return await self.client.request({"type": "flex_status"})

    # unsolicited messages: flex_invitation, flex_dispatch, flex_delivery, flex_payout, flex_event
    def on_invitation(self, cb: Callable[[dict], Any]) -> Callable[[], None]:
        return self.client.on("flex_invitation", cb)

    def on_dispatch(self, cb: Callable[[dict], Any]) -> Callable[[], None]:
        return self.client.on("flex_dispatch", cb)

    def on_delivery(self, cb: Callable[[dict], Any]) -> Callable[[], None]:
        return self.client.on("flex_delivery", cb)

    def on_payout(self, cb: Callable[[dict], Any]) -> Callable[[], None]:
        return self.client.on("flex_payout", cb)
