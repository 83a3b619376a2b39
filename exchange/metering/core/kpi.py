"""Key figures from metered energy: consumption, generation, grid exchange, self-sufficiency,
self-consumption, peak import, P2P share, CO2 avoided. Pure and exact; ratios are given
in parts per million (integers, rounded half-even), never floats.

Per interval, for a member:
  consumption = max(import, import + generation + discharge - export - charge)
  (without a generation meter an export is taken to come from an unmetered source, and
  consumption is then at least what was imported).
Self-sufficiency SS = (consumption - grid import) / consumption; for a member its grid
import is its import meter; for the community it is the import at the community's
boundary, sum over intervals of max(sum over members of (import - export), 0).
Self-consumption = (generation - export) / generation, export capped by generation per interval.
CO2 avoided = sum over intervals of (consumption - grid import) x grid intensity (g/kWh).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction

from exchange.core.units import US_PER_MIN, div_half_even
from exchange.metering.core.model import MemberSeries

PPM = 1_000_000


def ratio_ppm(num: int, den: int) -> int | None:
    """``num / den`` in parts per million, half-even; None when ``den`` is 0."""
    return div_half_even(num * PPM, den) if den > 0 else None


@dataclass(slots=True)
class Kpi:
    consumption_wh: int = 0
    generation_wh: int = 0
    grid_import_wh: int = 0
    grid_export_wh: int = 0
    self_consumed_wh: int = 0      # generation used on site (generation - export, per interval, >= 0)
    peak_import_wh: int = 0        # the largest grid import of one interval
    co2_avoided_g: int = 0
    p2p_bought_wh: int = 0
    intervals: int = 0
    estimated_intervals: int = 0
    interval_minutes: int = 15

    @property
    def self_sufficiency_ppm(self) -> int | None:
        return ratio_ppm(self.consumption_wh - self.grid_import_wh, self.consumption_wh)

    @property
    def self_consumption_ppm(self) -> int | None:
        return ratio_ppm(self.self_consumed_wh, self.generation_wh)

    @property
    def p2p_share_ppm(self) -> int | None:
        return ratio_ppm(self.p2p_bought_wh, self.consumption_wh)

    @property
    def peak_import_w(self) -> int:
        return div_half_even(self.peak_import_wh * 60, self.interval_minutes)

    def as_dict(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(self_sufficiency_ppm=self.self_sufficiency_ppm, self_consumption_ppm=self.self_consumption_ppm,
                   p2p_share_ppm=self.p2p_share_ppm, peak_import_w=self.peak_import_w)
        return out


def consumption(s: MemberSeries) -> list[int]:
    return [max(i, i + g + d - e - c) for i, e, g, c, d in zip(s.imp, s.exp, s.gen, s.chg, s.dis, strict=True)]


def member_kpi(s: MemberSeries, intensity_g_per_kwh: Sequence[int], p2p_bought_wh: int = 0) -> Kpi:
    cons = consumption(s)
    local = [c - i for c, i in zip(cons, s.imp, strict=True)]
    co2 = Fraction(sum(x * g for x, g in zip(local, intensity_g_per_kwh, strict=True)), 1000)
    return Kpi(consumption_wh=sum(cons), generation_wh=sum(s.gen), grid_import_wh=sum(s.imp),
               grid_export_wh=sum(s.exp),
               self_consumed_wh=sum(g - min(e, g) for g, e in zip(s.gen, s.exp, strict=True)),
               peak_import_wh=max(s.imp, default=0), co2_avoided_g=div_half_even(co2.numerator, co2.denominator),
               p2p_bought_wh=p2p_bought_wh, intervals=s.grid.n, estimated_intervals=s.estimated_intervals,
               interval_minutes=s.grid.step_us // US_PER_MIN)


def community_kpi(members: Iterable[MemberSeries], intensity_g_per_kwh: Sequence[int],
                  p2p_bought_wh: int = 0) -> Kpi:
    """The community as one site behind one grid connection."""
    members = list(members)
    if not members:
        return Kpi()
    n = members[0].grid.n
    cons = [0] * n
    net = [0] * n
    gen = [0] * n
    exp_gross = [0] * n
    estimated = 0
    for s in members:
        for i, c in enumerate(consumption(s)):
            cons[i] += c
        for i in range(n):
            net[i] += s.imp[i] - s.exp[i]
            gen[i] += s.gen[i]
            exp_gross[i] += s.exp[i]
        estimated += s.estimated_intervals
    grid_import = [v if v > 0 else 0 for v in net]
    grid_export = [-v if v < 0 else 0 for v in net]
    co2 = Fraction(sum((c - i) * g for c, i, g in zip(cons, grid_import, intensity_g_per_kwh, strict=True)), 1000)
    return Kpi(consumption_wh=sum(cons), generation_wh=sum(gen), grid_import_wh=sum(grid_import),
               grid_export_wh=sum(grid_export),
               self_consumed_wh=sum(g - min(e, g) for g, e in zip(gen, grid_export, strict=True)),
               peak_import_wh=max(grid_import, default=0),
               co2_avoided_g=div_half_even(co2.numerator, co2.denominator), p2p_bought_wh=p2p_bought_wh,
               intervals=n, estimated_intervals=estimated, interval_minutes=members[0].grid.step_us // US_PER_MIN)
