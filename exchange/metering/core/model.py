"""Metering and billing values: metering points, the interval grid, tariffs, the
community's fee schedule. Pure data, integers only (energy in Wh, prices in ticks of
0.01 EUR/MWh = 1e-8 EUR/Wh, money in units of 1e-8 EUR, times in integer µs UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from operator import add

from exchange.core.units import US_PER_MIN


class PointKind(StrEnum):
    """What a metering point measures (energy per interval, always >= 0)."""

    IMPORT = "import"            # main meter, energy taken from the grid
    EXPORT = "export"            # main meter, energy fed into the grid
    GENERATION = "generation"    # PV (or other) generation sub-meter
    STORAGE_CHARGE = "storage_charge"
    STORAGE_DISCHARGE = "storage_discharge"


@dataclass(frozen=True, slots=True)
class MeterPoint:
    point_id: str
    member: str
    kind: PointKind


@dataclass(frozen=True, slots=True)
class Grid:
    """The intervals ``[start_us + i * step_us, start_us + (i + 1) * step_us)``, ``i < n``."""

    start_us: int
    step_us: int
    n: int

    def __post_init__(self) -> None:
        if self.step_us <= 0 or self.n < 0:
            raise ValueError("a grid needs a positive step and a non-negative length")
        if self.start_us % self.step_us:
            raise ValueError("a grid starts on an interval boundary")

    @classmethod
    def between(cls, start_us: int, end_us: int, interval_minutes: int) -> Grid:
        step = interval_minutes * US_PER_MIN
        if start_us % step or end_us % step or end_us < start_us:
            raise ValueError(f"[{start_us}, {end_us}) is not a whole number of {interval_minutes}-min intervals")
        return cls(start_us, step, (end_us - start_us) // step)

    @property
    def end_us(self) -> int:
        return self.start_us + self.n * self.step_us

    def index(self, t_us: int) -> int:
        """The interval that starts at ``t_us`` (which must be on the grid)."""
        i, r = divmod(t_us - self.start_us, self.step_us)
        if r or not 0 <= i < self.n:
            raise ValueError(f"{t_us} is not an interval start of this grid")
        return i


class Basis(StrEnum):
    """What a per-kWh fee is charged on, per member and interval (net metering inside an
    interval: import and export of one interval are netted first)."""

    IMPORT = "import"                    # metered net import (from peers and from the supplier)
    EXPORT = "export"                    # metered net export
    SUPPLIER_IMPORT = "supplier_import"  # residual import bought from the supplier
    P2P_TRADED = "p2p_traded"            # energy bought plus energy sold on the exchange (per side)
    P2P_BOUGHT = "p2p_bought"
    P2P_SOLD = "p2p_sold"


class Payee(StrEnum):
    """Who a fee is owed to. ``community`` fees settle on chain (one transaction per
    period); ``supplier`` lines (energy, grid fees, taxes) are reported for the
    supplier's own bill."""

    COMMUNITY = "community"
    SUPPLIER = "supplier"


@dataclass(frozen=True, slots=True)
class PerKwhFee:
    """``ticks`` (1e-8 EUR per Wh; 1 ct/kWh = 1 000 ticks) on the ``basis`` energy. The part
    of an import (export) basis that came from (went to) peers in the community is charged
    ``community_reduction_bp`` basis points less (grid fees reduced for local trading)."""

    name: str
    ticks: int
    basis: Basis
    payee: Payee = Payee.SUPPLIER
    community_reduction_bp: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.community_reduction_bp <= 10_000:
            raise ValueError("community_reduction_bp is between 0 and 10000")


@dataclass(frozen=True, slots=True)
class PeriodicFee:
    """A fee per month (prorated by time for part of a month): ``units_per_month`` money
    units, or, with ``per_kw``, money units per kW of the member's contracted power."""

    name: str
    units_per_month: int
    payee: Payee = Payee.COMMUNITY
    per_kw: bool = False


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """The community's fees. ``imbalance_ticks`` set: a seller's shortfall (energy sold
    and not delivered) is charged at this price by the community, which buys the energy
    from the supplier; unset: the seller buys it from its supplier at its own tariff."""

    per_kwh: tuple[PerKwhFee, ...] = ()
    periodic: tuple[PeriodicFee, ...] = ()
    imbalance_ticks: int | None = None

    def __post_init__(self) -> None:
        names = [f.name for f in self.per_kwh] + [f.name for f in self.periodic]
        if len(names) != len(set(names)):
            raise ValueError("fee names must be unique")


#: The fee types of a typical community bill (the gsy-e SCM list); values are examples.
EXAMPLE_FEES = FeeSchedule(
    per_kwh=(
        PerKwhFee("grid_import_fee", 8_000, Basis.IMPORT, community_reduction_bp=5_000),
        PerKwhFee("grid_export_fee", 500, Basis.EXPORT, community_reduction_bp=5_000),
        PerKwhFee("taxes_surcharges", 2_000, Basis.IMPORT),
        PerKwhFee("electricity_tax", 1_500, Basis.IMPORT),
        PerKwhFee("marketplace_fee", 500, Basis.P2P_TRADED, Payee.COMMUNITY),
        PerKwhFee("service_fee", 200, Basis.IMPORT, Payee.COMMUNITY),
        PerKwhFee("assistance_fee", 100, Basis.IMPORT, Payee.COMMUNITY),
    ),
    periodic=(
        PeriodicFee("fixed_fee", 300_000_000, Payee.COMMUNITY),
        PeriodicFee("contracted_power_fee", 150_000_000, Payee.SUPPLIER, per_kw=True),
    ),
)


@dataclass(slots=True)
class MemberSeries:
    """One member's metered energy on a grid: per kind, one Wh value per interval
    (the sum over the member's points of that kind; a kind without a point is all 0).
    ``estimated[i]`` counts the member's readings of interval ``i`` that were estimated."""

    member: str
    grid: Grid
    imp: list[int]
    exp: list[int]
    gen: list[int]
    chg: list[int]
    dis: list[int]
    estimated: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, member: str, grid: Grid) -> MemberSeries:
        z = [0] * grid.n
        return cls(member, grid, list(z), list(z), list(z), list(z), list(z), list(z))

    def add(self, kind: PointKind, values: list[int]) -> None:
        """Add a point's values (one per interval) to the member's series of its kind."""
        if len(values) != self.grid.n:
            raise ValueError("a point's values must cover the grid")
        name = _SERIES_OF[kind]
        setattr(self, name, list(map(add, getattr(self, name), values)))

    @property
    def estimated_intervals(self) -> int:
        return sum(1 for e in self.estimated if e)


_SERIES_OF = {PointKind.IMPORT: "imp", PointKind.EXPORT: "exp", PointKind.GENERATION: "gen",
              PointKind.STORAGE_CHARGE: "chg", PointKind.STORAGE_DISCHARGE: "dis"}
