"""A bot member's smart meter: readings of its delivered intervals, pushed over its WebSocket.

The readings are the member's community profile plus a seeded forecast error
(:func:`clients.community.meters.member_readings`); they go to the exchange's metering
with the peer message ``meter_readings`` (at most :data:`MAX_PUSH` per message,
docs/metering.md), for the member's own metering points, which the meter learns once with
``meter_points`` (the runner registers them with an operator token; otherwise the operator
must have). A push that fails is retried from the same interval on the next call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from clients.community.meters import FORECAST_ERROR_PERMILLE, METER_INTERVAL_MINUTES, member_readings
from clients.sdk import RequestError, VoltbourseClient, VoltbourseError

__all__ = ["MAX_PUSH", "BotMeter"]

log = logging.getLogger(__name__)
MAX_PUSH = 150  # readings per meter_readings message (the protocol's limit: one 16 KiB frame)
KINDS = ("import", "export", "generation")


class Forecasts(Protocol):
    """What a meter reads from (:class:`clients.bots.prosumer.CommunityData`)."""

    seed: int

    def hour_energy(self, address: str, hour_start_us: int) -> tuple[int, int]: ...


@dataclass
class BotMeter:
    address: str
    data: Forecasts
    interval_minutes: int = METER_INTERVAL_MINUTES
    error_amplitude: int = FORECAST_ERROR_PERMILLE
    points: dict[str, str] | None = None  # kind -> point id (None: not asked yet)
    next_us: int | None = None  # the first interval not pushed yet
    pushed: int = 0  # readings accepted by the exchange
    messages: int = 0
    failures: int = 0
    disabled: str | None = None  # why this meter does not push
    sent: list[dict] = field(default_factory=list, repr=False)  # every reading pushed (kept with keep_sent)
    keep_sent: bool = False

    async def _points(self, client: VoltbourseClient) -> dict[str, str]:
        if self.points is None:
            try:
                r = await client.request({"type": "meter_points"})
            except RequestError as exc:  # refused (no metering on this exchange): not again
                self.disabled = f"meter_points refused: {exc}"
                self.points = {}
                return self.points
            mine: dict[str, str] = {}
            for p in sorted(r.get("points", []), key=lambda p: p["point_id"]):
                if p["kind"] in KINDS:
                    mine.setdefault(p["kind"], p["point_id"])
            self.points = mine
            if "import" not in mine:
                self.disabled = "no import metering point"
        return self.points

    def readings(self, start_us: int, end_us: int, points: dict[str, str]) -> list[dict]:
        return member_readings(self.address, points, lambda h: self.data.hour_energy(self.address, h),
                               start_us, end_us, self.data.seed, interval_minutes=self.interval_minutes,
                               error_amplitude=self.error_amplitude)

    async def push(self, client: VoltbourseClient | None, start_us: int, end_us: int) -> int:
        """Push the readings of ``[max(start_us, where it stopped), end_us)`` (``end_us`` on the
        interval grid: intervals that ended by market time). Returns the readings pushed now."""
        if self.disabled or client is None:
            return 0
        begin = start_us if self.next_us is None else max(start_us, self.next_us)
        if end_us <= begin:
            return 0
        try:
            points = await self._points(client)
            if self.disabled:
                return 0
            rows = self.readings(begin, end_us, points)
            done = 0
            for k in range(0, len(rows), MAX_PUSH):
                chunk = rows[k:k + MAX_PUSH]
                await client.request({"type": "meter_readings", "readings": chunk})
                self.messages += 1
                done += len(chunk)
                if self.keep_sent:
                    self.sent += chunk
            self.pushed += done
            self.next_us = end_us
            return done
        except VoltbourseError as exc:
            # a chunk that went through is pushed again next time (the same values: unchanged)
            self.failures += 1
            log.warning("%s: pushing meter readings failed: %s", self.address[:10], exc)
            return 0
