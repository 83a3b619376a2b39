"""A member's bill for a period from its settled flows and the fee schedule. Pure.

Money is exact (1e-8 EUR units) from meter x price; the one place it is rounded is
:func:`round_units` (half-even, to the money unit): a fee reduced by basis points for
energy traded inside the community, and a monthly fee prorated to part of a month. A
statement shows euros to the cent with :func:`exchange.core.units.eur_cents_half_even`
(display only; the total owed stays in money units, which is also the settlement
token's base unit)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from exchange.core.units import UTC, div_half_even, from_us, to_us
from exchange.metering.core.model import Basis, FeeSchedule, Payee, PerKwhFee
from exchange.metering.core.settle import Flows


def round_units(x: Fraction) -> int:
    """The rounding of bills: to the nearest money unit (1e-8 EUR), ties to even."""
    return div_half_even(x.numerator, x.denominator)


@dataclass(frozen=True, slots=True)
class Line:
    """One bill line. ``amount_units`` > 0: the member pays; < 0: the member is paid."""

    name: str
    payee: str            # peers | supplier | community
    amount_units: int
    energy_wh: int | None = None
    rate_ticks: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Bill:
    member: str
    start_us: int
    end_us: int
    lines: tuple[Line, ...]
    total_units: int
    grid_only_units: int
    savings_units: int
    community_units: int   # what the member owes the community (settled on chain)
    flows: Flows

    def to_dict(self) -> dict[str, object]:
        return {"member": self.member, "start_us": self.start_us, "end_us": self.end_us,
                "lines": [asdict(x) for x in self.lines], "total_units": self.total_units,
                "grid_only_units": self.grid_only_units, "savings_units": self.savings_units,
                "community_units": self.community_units, "flows": self.flows.as_dict()}


def month_fraction(start_us: int, end_us: int, tz: ZoneInfo) -> Fraction:
    """How many months ``[start, end)`` covers, exactly: the sum over the community's local
    calendar months it touches of (time covered / the month's length)."""
    if end_us <= start_us:
        return Fraction(0)
    total = Fraction(0)
    local = from_us(start_us).astimezone(tz)
    month = datetime(local.year, local.month, 1, tzinfo=tz)
    while to_us(month) < end_us:
        nxt = (month + timedelta(days=32)).replace(day=1)
        m0, m1 = to_us(month.astimezone(UTC)), to_us(nxt.astimezone(UTC))
        covered = min(m1, end_us) - max(m0, start_us)
        if covered > 0:
            total += Fraction(covered, m1 - m0)
        month = nxt
    return total


def _basis(f: Flows, basis: Basis) -> tuple[int, int]:
    """(energy the fee is charged on, the part of it traded inside the community)."""
    if basis is Basis.IMPORT:
        return f.import_wh, f.from_peers_wh
    if basis is Basis.EXPORT:
        return f.export_wh, f.to_peers_wh
    if basis is Basis.SUPPLIER_IMPORT:
        return f.supplier_import_wh, 0
    if basis is Basis.P2P_TRADED:
        return f.bought_wh + f.sold_wh, 0
    if basis is Basis.P2P_BOUGHT:
        return f.bought_wh, 0
    return f.sold_wh, 0


def _per_kwh_line(fee: PerKwhFee, f: Flows) -> Line:
    energy, local = _basis(f, fee.basis)
    full = Fraction(fee.ticks * energy)
    reduction = Fraction(fee.ticks * local * fee.community_reduction_bp, 10_000)
    detail = (f"{local} Wh traded in the community at {Decimal(fee.community_reduction_bp).scaleb(-2)} % less"
              if local and fee.community_reduction_bp else "")
    return Line(fee.name, fee.payee.value, round_units(full - reduction), energy, fee.ticks, detail)


def _grid_only_energy(f: Flows, basis: Basis) -> int:
    if basis in (Basis.IMPORT, Basis.SUPPLIER_IMPORT):
        return f.import_wh
    if basis is Basis.EXPORT:
        return f.export_wh
    return 0


def bill(member: str, start_us: int, end_us: int, flows: Flows, fees: FeeSchedule, tz: ZoneInfo,
         contracted_power_w: int = 0, extra: tuple[Line, ...] = ()) -> Bill:
    """The bill of ``member`` for ``[start_us, end_us)``: energy lines, every fee, ``extra``
    lines (flexibility payouts and penalties), the grid-only counterfactual and savings."""
    f = flows
    lines: list[Line] = [
        Line("p2p_bought", "peers", f.p2p_paid_units, f.bought_wh),
        Line("p2p_sold", "peers", -f.p2p_received_units, f.sold_wh),
        Line("supplier_import", "supplier", f.supplier_import_units, f.supplier_import_wh - (
            f.shortfall_wh if fees.imbalance_ticks is not None else 0)),
        Line("supplier_export", "supplier", -f.supplier_export_units, f.supplier_export_wh),
    ]
    if fees.imbalance_ticks is not None:
        lines.append(Line("imbalance", "community", f.imbalance_units, f.shortfall_wh, fees.imbalance_ticks,
                          "energy sold and not delivered, at the community's imbalance price"))
    lines.extend(_per_kwh_line(fee, f) for fee in fees.per_kwh)
    months = month_fraction(start_us, end_us, tz)
    grid_only = f.grid_only_import_units - f.grid_only_export_units
    for fee in fees.per_kwh:
        if fee.payee is Payee.SUPPLIER:
            grid_only += fee.ticks * _grid_only_energy(f, fee.basis)
    for pf in fees.periodic:
        base = Fraction(pf.units_per_month) * months
        if pf.per_kw:
            base *= Fraction(contracted_power_w, 1000)
        amount = round_units(base)
        shown = (Decimal(months.numerator) / Decimal(months.denominator)).quantize(Decimal("0.0001"))
        detail = f"{shown} month(s)" + (f" x {Decimal(contracted_power_w).scaleb(-3)} kW" if pf.per_kw else "")
        lines.append(Line(pf.name, pf.payee.value, amount, detail=detail))
        if pf.payee is Payee.SUPPLIER:
            grid_only += amount
    lines.extend(extra)
    total = sum(x.amount_units for x in lines)
    community = sum(x.amount_units for x in lines if x.payee == "community")
    return Bill(member, start_us, end_us, tuple(lines), total, grid_only, grid_only - total, community, f)
