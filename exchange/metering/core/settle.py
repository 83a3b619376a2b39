"""Delivery settlement: a member's metered energy against its exchange position, interval
by interval, and what that means in energy and money with peers, the supplier and the
community. Pure and exact (integers only).

Per member and interval (docs/metering.md, "Delivery settlement", worked example):

- ``N = import - export``: metered net import (import and export of one interval net);
- ``P``: net position bought on the exchange (bought - sold) in the interval: the trades of
  each product, summed per buyer and seller, are delivered at constant power over the
  product's intervals (:func:`~exchange.metering.core.series.spread_flat`; 1 Wh of remainder
  at a time to the earliest intervals). Buyer and seller get the same parts with opposite
  signs, so the positions of every interval sum to 0 exactly;
- ``R = N - P``: the residual with the supplier: ``R > 0`` imported from the supplier at the
  member's import tariff, ``R < 0`` exported to it at its feed-in tariff;
- ``from_peers = min(P+, N+)``: bought energy the member actually took;
  ``to_peers = min(P-, N-)``: sold energy the member actually delivered;
- ``shortfall = P- - to_peers``: sold and not delivered. It is part of ``R+`` (the seller
  takes it from the grid). With an imbalance price the community charges it at that price
  and pays the supplier for it at the member's tariff; without one the member buys it
  from its supplier like any other residual import.

Per interval ``N = P + R`` for every member, so over a product the community's net grid
exchange is the sum of the residuals (the positions sum to 0: every trade has both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import compress, repeat
from operator import mul, sub

from exchange.metering.core.model import MemberSeries


@dataclass(slots=True)
class Flows:
    """One member's delivery settlement over a grid: energy (Wh) and money (1e-8 EUR) sums.
    Money here is exact (Wh x ticks); rounding happens only in bills."""

    import_wh: int = 0            # sum of N+ (metered net import)
    export_wh: int = 0            # sum of N-
    bought_wh: int = 0            # sum of P+
    sold_wh: int = 0              # sum of P-
    from_peers_wh: int = 0
    to_peers_wh: int = 0
    supplier_import_wh: int = 0   # sum of R+ (shortfall included)
    supplier_export_wh: int = 0   # sum of R-
    shortfall_wh: int = 0
    supplier_import_units: int = 0   # what the member pays the supplier for R+ (less the shortfall
    #                                  when the community charges an imbalance price)
    supplier_export_units: int = 0   # what the supplier pays the member for R-
    shortfall_tariff_units: int = 0  # the shortfall at the member's tariff (paid by the community
    #                                  to the supplier when an imbalance price is set)
    imbalance_units: int = 0         # the shortfall at the imbalance price (member -> community)
    grid_only_import_units: int = 0  # counterfactual without the community: N+ at the tariff
    grid_only_export_units: int = 0  # and N- at the feed-in tariff
    p2p_paid_units: int = 0          # paid to peers for energy bought (from the trades)
    p2p_received_units: int = 0      # received from peers for energy sold
    intervals: int = 0
    estimated_intervals: int = 0

    def __add__(self, other: Flows) -> Flows:
        return Flows(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def settle_member(series: MemberSeries, position: Sequence[int], import_ticks: Sequence[int],
                  feed_in_ticks: Sequence[int], imbalance_ticks: int | None = None,
                  p2p_paid_units: int = 0, p2p_received_units: int = 0) -> Flows:
    """Settle one member over ``series.grid`` (``position`` and the prices per interval).

    Computed as if the member had no position (everything with the supplier), then
    corrected in the intervals where it has one (positions are sparse: a member trades in
    a few products of a year)."""
    n = series.grid.n
    if not len(position) == len(import_ticks) == len(feed_in_ticks) == len(series.imp) == n:
        raise ValueError("series, position and prices must cover the same intervals")
    net = list(map(sub, series.imp, series.exp))
    n_pos = list(map(max, net, repeat(0, n)))
    n_neg = list(map(sub, n_pos, net))
    f = Flows(intervals=n, estimated_intervals=sum(1 for e in series.estimated if e),
              p2p_paid_units=p2p_paid_units, p2p_received_units=p2p_received_units)
    f.import_wh = sum(n_pos)
    f.export_wh = sum(n_neg)
    f.grid_only_import_units = sum(map(mul, n_pos, import_ticks))
    f.grid_only_export_units = sum(map(mul, n_neg, feed_in_ticks))
    r_imp_wh, r_exp_wh = f.import_wh, f.export_wh
    r_imp_units, r_exp_units = f.grid_only_import_units, f.grid_only_export_units
    short_units = 0
    for i in compress(range(n), position):
        p = position[i]
        v = net[i]
        pi, fi = import_ticks[i], feed_in_ticks[i]
        # take out what the interval counted without a position ...
        r_imp_wh -= n_pos[i]
        r_exp_wh -= n_neg[i]
        r_imp_units -= n_pos[i] * pi
        r_exp_units -= n_neg[i] * fi
        # ... and count it with the position
        r = v - p
        if r > 0:
            r_imp_wh += r
            r_imp_units += r * pi
        elif r < 0:
            r_exp_wh -= r
            r_exp_units -= r * fi
        if p > 0:
            f.bought_wh += p
            f.from_peers_wh += min(p, n_pos[i])
        else:
            sold = -p
            to_peers = min(sold, n_neg[i])
            f.sold_wh += sold
            f.to_peers_wh += to_peers
            f.shortfall_wh += sold - to_peers
            short_units += (sold - to_peers) * pi
    f.supplier_import_wh, f.supplier_export_wh = r_imp_wh, r_exp_wh
    f.supplier_export_units = r_exp_units
    if imbalance_ticks is None:
        f.supplier_import_units = r_imp_units
    else:
        f.shortfall_tariff_units = short_units
        f.supplier_import_units = r_imp_units - short_units
        f.imbalance_units = f.shortfall_wh * imbalance_ticks
    return f


@dataclass(frozen=True, slots=True)
class Transfer:
    """``amount_units`` owed by ``payer`` to ``payee`` for ``line``."""

    payer: str
    payee: str
    line: str
    amount_units: int


SUPPLIER = "supplier"
COMMUNITY = "community"


def ledger(member: str, f: Flows) -> list[Transfer]:
    """The money of a member's flows as transfers (P2P money is between the member and
    the ``peers`` account, which the other members' transfers balance)."""
    out = [
        Transfer(member, "peers", "p2p_bought", f.p2p_paid_units),
        Transfer("peers", member, "p2p_sold", f.p2p_received_units),
        Transfer(member, SUPPLIER, "supplier_import", f.supplier_import_units),
        Transfer(SUPPLIER, member, "supplier_export", f.supplier_export_units),
    ]
    if f.imbalance_units or f.shortfall_tariff_units:
        out.append(Transfer(member, COMMUNITY, "imbalance", f.imbalance_units))
        out.append(Transfer(COMMUNITY, SUPPLIER, "shortfall_energy", f.shortfall_tariff_units))
    return [t for t in out if t.amount_units]


class Imbalanced(AssertionError):
    """A settlement that does not balance: a bug, never a data problem."""


def check_balance(per_member: Mapping[str, Flows], positions: Mapping[str, Sequence[int]],
                  nets: Mapping[str, Sequence[int]], *, community: bool = True) -> None:
    """The checks of one product (or any set of intervals) settled for every member:

    - energy, per member and interval: ``N = P + R`` (summed: import - export = bought - sold
      + supplier import - supplier export), and shortfall <= supplier import;
    - energy, community: the positions sum to 0 in every interval (every trade has two
      sides), so the community's net grid exchange is the sum of the residuals;
    - money: P2P payments sum to 0 over the members (the ``peers`` account nets out).

    ``community=False``: ``per_member`` is part of the community (one member's view): only
    the checks of each member hold; the others need both sides of every trade.
    Raises :class:`Imbalanced`.
    """
    for m, f in per_member.items():
        if f.import_wh - f.export_wh != (f.bought_wh - f.sold_wh) + (f.supplier_import_wh - f.supplier_export_wh):
            raise Imbalanced(f"{m}: N != P + R")
        if f.shortfall_wh > f.supplier_import_wh or f.from_peers_wh > f.bought_wh or f.to_peers_wh > f.sold_wh:
            raise Imbalanced(f"{m}: a part exceeds its whole")
    if not community:
        return
    if positions:
        n = len(next(iter(positions.values())))
        for i in range(n):
            if sum(p[i] for p in positions.values()):
                raise Imbalanced(f"positions do not sum to 0 in interval {i}")
    paid = sum(f.p2p_paid_units for f in per_member.values())
    received = sum(f.p2p_received_units for f in per_member.values())
    if paid != received:
        raise Imbalanced(f"P2P money does not balance: paid {paid} != received {received}")
    community_net = sum(sum(v) for v in nets.values())
    residual = sum(f.supplier_import_wh - f.supplier_export_wh for f in per_member.values())
    if nets and community_net != residual:
        raise Imbalanced("the community's net grid exchange is not the sum of the residuals")
