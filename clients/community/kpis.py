"""Community KPIs from trades and profiles: pure functions, exact integers and fractions.

Inputs
------
* ``hourly``: member -> product id -> (consumption Wh, generation Wh), e.g.
  :func:`clients.community.profiles.hourly_table`.
* ``trades``: anything with ``product_id``, ``buyer``, ``seller``,
  ``energy_wh`` and ``price_ticks`` (:class:`Trade`), or engine trade events /
  their dicts via :func:`trade_from_event`.
* Tariffs in ticks (0.01 EUR/MWh). Money is in money units (Wh x ticks =
  1e-8 EUR, ``exchange.core.units``).

Definitions (also in docs/community.md)
---------------------------------------
Per member ``m`` and product (hour) ``h``, batteries aside (a battery's
charging counts as consumption, its discharging as generation, if they are in
the profile at all)::

    net(m, h)    = consumption - generation - bought + sold
    import(m, h) = max(net, 0)        # drawn from the grid
    export(m, h) = max(-net, 0)       # fed into the grid

* Self-sufficiency ``SS = (sum consumption - sum import) / sum consumption``
  over the members and hours considered (a ``Fraction``; 1 when nothing is
  consumed). It is at most 1; it is at least 0 as long as no member sells
  energy it does not have (sold <= generation + bought per hour), which is
  what the planners guarantee. Without trades it is the members' own PV
  self-consumption.
* Community cost = sum over members of ``import * retail - export * feed_in
  + p2p paid - p2p received``. P2P payments cancel inside the community, so
  the community cost only depends on the grid flows.
* Baselines: ``no_p2p`` is the same members without trading (each nets its own
  PV per hour behind its meter); ``grid_only`` buys all consumption at retail and
  sells all generation at feed-in (no local use at all).
* The P2P matrix: seller -> buyer -> (Wh, money); row sums are what each
  member sold, column sums what it bought.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

Hourly = Mapping[str, Mapping[str, tuple[int, int]]]
BP = 10_000


@dataclass(frozen=True, slots=True)
class Trade:
    product_id: str
    buyer: str
    seller: str
    energy_wh: int
    price_ticks: int

    @property
    def money(self) -> int:
        return self.energy_wh * self.price_ticks


def trade_from_event(ev: Any) -> Trade:
    """An engine ``TradeEvent`` (or its dict, or a trades-table row) as a :class:`Trade`."""
    def get(k: str) -> Any:
        return ev.get(k) if isinstance(ev, Mapping) else getattr(ev, k, None)

    qty = get("energy_wh")
    qty = get("quantity") if qty is None else qty
    price = get("price_ticks")
    price = get("price") if price is None else price
    return Trade(get("product_id"), get("buyer"), get("seller"), int(qty), int(price))


@dataclass(frozen=True, slots=True)
class Tariffs:
    """Grid tariffs in ticks: retail 300.00 EUR/MWh (30 ct/kWh), feed-in 80.00 EUR/MWh (8 ct/kWh)."""

    retail_ticks: int = 30_000
    feed_in_ticks: int = 8_000


def to_bp(x: Fraction) -> int:
    """A fraction in basis points, rounded half to even (display/reporting)."""
    return round(x * BP)


# --------------------------------------------------------------------------- building blocks


def positions(trades: Iterable[Any]) -> dict[str, dict[str, list[int]]]:
    """member -> product -> [bought Wh, sold Wh, paid money (buys - sells)]."""
    out: dict[str, dict[str, list[int]]] = {}
    for t in trades:
        for member, sign in ((t.buyer, 1), (t.seller, -1)):
            p = out.setdefault(member, {}).setdefault(t.product_id, [0, 0, 0])
            p[0 if sign > 0 else 1] += t.energy_wh
            p[2] += sign * t.energy_wh * t.price_ticks
    return out


def p2p_matrix(trades: Iterable[Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """seller -> buyer -> (energy Wh, money) summed over all products."""
    m: dict[str, dict[str, tuple[int, int]]] = {}
    for t in trades:
        row = m.setdefault(t.seller, {})
        e, v = row.get(t.buyer, (0, 0))
        row[t.buyer] = (e + t.energy_wh, v + t.energy_wh * t.price_ticks)
    return m


def grid_flows(hourly: Hourly, trades: Iterable[Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """member -> product -> (grid import Wh, grid export Wh); members that only trade
    (no profile) count with zero consumption and generation."""
    pos = positions(trades)
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for member in sorted(set(hourly) | set(pos)):
        prof = hourly.get(member, {})
        mp = pos.get(member, {})
        row = out[member] = {}
        for pid in sorted(set(prof) | set(mp)):
            c, g = prof.get(pid, (0, 0))
            b, s, _ = mp.get(pid, (0, 0, 0))
            net = c - g - b + s
            row[pid] = (net, 0) if net > 0 else (0, -net)
    return out


def self_sufficiency(hourly: Hourly, trades: Iterable[Any] = (), members: Iterable[str] | None = None) -> Fraction:
    """(consumption - grid import) / consumption over ``members`` (default: all)."""
    flows = grid_flows(hourly, trades)
    keep = set(flows) if members is None else set(members)
    cons = sum(c for m in keep for (c, _g) in hourly.get(m, {}).values())
    imp = sum(i for m in keep for (i, _e) in flows.get(m, {}).values())
    return Fraction(cons - imp, cons) if cons else Fraction(1)


@dataclass(frozen=True, slots=True)
class MemberCost:
    consumption_wh: int
    generation_wh: int
    bought_wh: int
    sold_wh: int
    import_wh: int
    export_wh: int
    p2p_paid: int  # money: paid for buys - received for sells
    grid_cost: int  # money: import x retail - export x feed-in
    cost: int  # grid_cost + p2p_paid
    baseline_no_p2p: int  # money, the same hours without trading
    baseline_grid_only: int  # money, all consumption at retail, all generation at feed-in

    @property
    def savings(self) -> int:
        return self.baseline_no_p2p - self.cost


def member_costs(hourly: Hourly, trades: Iterable[Any], tariffs: Tariffs = Tariffs()) -> dict[str, MemberCost]:
    trades = list(trades)
    flows = grid_flows(hourly, trades)
    pos = positions(trades)
    r, f = tariffs.retail_ticks, tariffs.feed_in_ticks
    out = {}
    for member, row in flows.items():
        prof = hourly.get(member, {})
        cons = sum(c for c, _ in prof.values())
        gen = sum(g for _, g in prof.values())
        mp = pos.get(member, {})
        bought = sum(p[0] for p in mp.values())
        sold = sum(p[1] for p in mp.values())
        paid = sum(p[2] for p in mp.values())
        imp = sum(i for i, _ in row.values())
        exp = sum(e for _, e in row.values())
        base = sum(max(c - g, 0) * r - max(g - c, 0) * f for c, g in prof.values())
        grid_cost = imp * r - exp * f
        out[member] = MemberCost(cons, gen, bought, sold, imp, exp, paid, grid_cost, grid_cost + paid, base,
                                 cons * r - gen * f)
    return out


def community_kpis(hourly: Hourly, trades: Iterable[Any], tariffs: Tariffs = Tariffs()) -> dict:
    """All community KPIs as a JSON-ready dict (ints; fractions as ``[num, den]`` and basis points)."""
    trades = [t if isinstance(t, Trade) else trade_from_event(t) for t in trades]
    costs = member_costs(hourly, trades, tariffs)
    ss = self_sufficiency(hourly, trades)
    ss0 = self_sufficiency(hourly, ())
    tot = {k: sum(getattr(c, k) for c in costs.values())
           for k in ("consumption_wh", "generation_wh", "bought_wh", "import_wh", "export_wh", "cost",
                     "baseline_no_p2p", "baseline_grid_only")}
    return {
        "members": len(costs),
        "trades": len(trades),
        "traded_wh": sum(t.energy_wh for t in trades),
        "traded_money": sum(t.money for t in trades),
        **tot,
        "self_sufficiency": [ss.numerator, ss.denominator],
        "self_sufficiency_bp": to_bp(ss),
        "self_sufficiency_no_p2p_bp": to_bp(ss0),
        "savings_vs_no_p2p": tot["baseline_no_p2p"] - tot["cost"],
        "savings_vs_grid_only": tot["baseline_grid_only"] - tot["cost"],
        "p2p_matrix": {s: {b: list(v) for b, v in row.items()} for s, row in sorted(p2p_matrix(trades).items())},
        "tariffs": {"retail_ticks": tariffs.retail_ticks, "feed_in_ticks": tariffs.feed_in_ticks},
    }


__all__ = ["MemberCost", "Tariffs", "Trade", "community_kpis", "grid_flows", "member_costs", "p2p_matrix",
           "positions", "self_sufficiency", "to_bp", "trade_from_event"]
