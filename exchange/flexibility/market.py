"""The balancing-market adapter boundary and a simulated TSO.

A real TSO interface (e.g. an MARI/PICASSO-connected platform) would implement
:class:`BalancingMarket`; everything else talks only to this protocol.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from exchange.core.units import US_PER_MIN
from exchange.flexibility.core.event import Activation
from exchange.flexibility.core.model import Bid


@dataclass(frozen=True, slots=True)
class BidResult:
    bid_id: int
    accepted: bool
    reason: str = ""


@runtime_checkable
class BalancingMarket(Protocol):
    name: str

    def gate_us(self, validity_start: int) -> int:
        """Last instant at which bids for ``validity_start`` are accepted."""

    def activation_known_us(self, validity_start: int) -> int:
        """From when on :meth:`activations` can answer for ``validity_start``."""

    async def submit_bids(self, bids: list[Bid], now_us: int) -> list[BidResult]:
        """Hand bids to the market (before its gate)."""

    async def activations(self, validity_start: int, now_us: int) -> list[Activation]:
        """The activations of our bids for the validity period starting at ``validity_start``."""


class SimulatedBalancingMarket:
    """A reproducible TSO: accepts well-formed bids before its gate (``gate_minutes`` before
    the validity period), and at the gate activates each with probability
    ``activation_ppm`` at a price drawn from [its bid price, bid price + ``uplift_max``]
    (pay-as-cleared: never below the bid). A divisible bid may be activated partly (a
    multiple of ``granularity_w``, at least ``min_activation_ppm`` of it); an indivisible
    bid fully. The draws depend only on ``seed``, the validity start and the bid id."""

    name = "simulated"

    def __init__(self, seed: int = 0, *, gate_minutes: int = 25, activation_ppm: int = 700_000,
                 uplift_max: int = 5_000, min_activation_ppm: int = 500_000, granularity_w: int = 100_000,
                 force_activation: bool = False) -> None:
        self.seed = seed
        self.gate_minutes = gate_minutes
        self.activation_ppm = activation_ppm
        self.uplift_max = uplift_max
        self.min_activation_ppm = min_activation_ppm
        self.granularity_w = granularity_w
        self.force_activation = force_activation
        self.bids: dict[int, list[Bid]] = {}  # validity start -> accepted bids

    def gate_us(self, validity_start: int) -> int:
        return validity_start - self.gate_minutes * US_PER_MIN

    def activation_known_us(self, validity_start: int) -> int:
        return self.gate_us(validity_start)

    def submit(self, bids: list[Bid], now_us: int) -> list[BidResult]:
        out = []
        for b in bids:
            if now_us > self.gate_us(b.validity_start):
                out.append(BidResult(b.bid_id, False, "GATE_CLOSED"))
            elif b.volume_w <= 0 or b.price < 0:
                out.append(BidResult(b.bid_id, False, "INVALID_BID"))
            else:
                self.bids.setdefault(b.validity_start, []).append(b)
                out.append(BidResult(b.bid_id, True))
        return out

    def activate(self, validity_start: int, now_us: int) -> list[Activation]:
        if now_us < self.activation_known_us(validity_start):
            return []
        out = []
        for b in sorted(self.bids.get(validity_start, []), key=lambda b: b.bid_id):
            rng = random.Random(f"{self.seed}:{validity_start}:{b.bid_id}")
            hit = rng.randrange(1_000_000) < self.activation_ppm
            if not (hit or self.force_activation):
                continue
            price = b.price + rng.randrange(self.uplift_max + 1)
            if b.divisible:
                g = self.granularity_w
                lo = max(g, -(-b.volume_w * self.min_activation_ppm // 1_000_000 // g) * g)
                lo = min(lo, b.volume_w)
                steps = (b.volume_w - lo) // g
                volume = lo + rng.randrange(steps + 1) * g
            else:
                volume = b.volume_w
            out.append(Activation(b.bid_id, volume, price, b.validity_start, b.validity_end))
        return out

    async def submit_bids(self, bids: list[Bid], now_us: int) -> list[BidResult]:
        return self.submit(bids, now_us)

    async def activations(self, validity_start: int, now_us: int) -> list[Activation]:
        return self.activate(validity_start, now_us)
