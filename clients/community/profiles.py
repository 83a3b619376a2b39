"""Community demo data: plausible member profiles, 15-min integer Wh, any day.

Built on the field's own libraries rather than hand-made curves:

* **Consumption**: demandlib's BDEW standard load profiles (``h0`` households,
  ``g0``-``g6`` businesses, ``l0`` farms; ``h0`` uses the dynamised variant
  ``h0_dyn`` as BDEW prescribes), normalised to 1 over the year and scaled to
  the member's annual consumption. The profiles are in local wall time of the
  community's time zone; holidays (German national ones by default, computed
  here, nothing is downloaded) count as Sundays.
* **Generation**: pvlib's clear-sky model (Ineichen with the bundled Linke
  turbidity table) for the community's location, transposed to the member's
  panel plane (isotropic sky), PVWatts DC with a Faiman cell temperature and
  14 % system losses, scaled to the member's peak power.
* **Noise**: seeded, per member and day: a daily consumption factor and a
  per-slot factor (integers in per mille), and a per-slot PV factor (plus an
  optional daily clearness factor below clear sky).
* **Batteries**: capacity (Wh), power (W), round-trip efficiency (exact
  ``Fraction``), initial state of charge; carried on the member for the
  battery planner and the KPIs (the profiles themselves are battery-free).

Units and the float boundary
----------------------------
The libraries compute in floats. They are converted to integers exactly once,
with one documented rounding each (Python's ``round``, half to even):

* the SLP value of a 15-min slot (a fraction of the annual energy) becomes an
  integer number of parts per 10**12 (``PPT``);
* the PV energy of a slot for 1 kWp becomes integer milliwatt-hours.

Everything after that is integer arithmetic: a member's slot energy is
``annual_wh * ppt * factor_permille / (10**12 * 1000)`` and
``mwh_per_kwp * pv_wp * factor_permille / (1000 * 1000 * 1000)``, each
rounded half to even by :func:`div_half_even`. Output energies are ``int`` Wh.

Time
----
A day is a *local* calendar day of the community's time zone
(:data:`COMMUNITY_TZ`, Europe/Amsterdam like the exchange's default): 96
slots of 15 minutes, 92 or 100 on DST change days. Slot starts are
timezone-aware UTC datetimes. :func:`hourly` aggregates the slots
into the exchange's products (``20261122T2300Z-60``, see
``exchange.core.calendar.product_id_for``).

Speed: the normalised curve of each profile type and the PV curve of each
panel orientation are cached per day, so a member costs a few integer
multiplications per slot (200 members for one day: well under a second once
the libraries are imported).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import lru_cache
from zoneinfo import ZoneInfo

from exchange.core.calendar import product_id_for
from exchange.core.units import US_PER_MIN, div_half_even, from_us, to_us

SLOT_MINUTES = 15
PPT = 10**12  # parts per 10**12 of the annual energy
SLP_TYPES = ("h0", "g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0")
#: The community's time zone: the clients' one default for local days, profiles and the
#: local exchange they start (the exchange's own default, ``Settings.timezone``, is the same).
COMMUNITY_TZ = "Europe/Amsterdam"

#: Rough monthly mean daytime air temperatures (deg C) for a central European
#: site, used only for the PV cell temperature. January first.
MONTHLY_AIR_TEMP_C = (1, 2, 6, 11, 15, 19, 21, 21, 16, 11, 6, 2)
PV_SYSTEM_LOSSES = 0.14  # PVWatts default
PV_GAMMA_PDC = -0.004  # 1/K, crystalline silicon


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Location:
    """Where the community is (floats: configuration for pvlib, not energy)."""

    latitude: float = 48.14
    longitude: float = 11.58
    altitude_m: float = 520.0
    timezone: str = COMMUNITY_TZ

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)
        if not -90 <= self.latitude <= 90 or not -180 <= self.longitude <= 180:
            raise ValueError("latitude/longitude out of range")


@dataclass(frozen=True, slots=True)
class Battery:
    capacity_wh: int
    power_w: int
    efficiency: Fraction = Fraction(9, 10)  # round trip
    min_soc_wh: int = 0
    initial_soc_wh: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.min_soc_wh <= self.initial_soc_wh <= self.capacity_wh and self.power_w > 0):
            raise ValueError("battery: need 0 <= min_soc <= initial_soc <= capacity and power > 0")
        if not (0 < self.efficiency <= 1):
            raise ValueError("battery efficiency must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the community.

    ``kind`` is descriptive: ``consumer``, ``prosumer`` (PV), ``battery``
    (PV and a battery) or ``aggregator`` (the community manager, with the
    community battery).
    """

    member_id: str
    kind: str
    slp: str  # one of SLP_TYPES
    annual_kwh: int
    pv_wp: int = 0
    pv_tilt: int = 30  # degrees
    pv_azimuth: int = 180  # degrees, 180 = south
    battery: Battery | None = None
    noise_permille: int = 150  # per-slot consumption noise amplitude
    daily_noise_permille: int = 100  # daily consumption factor amplitude
    pv_noise_permille: int = 50  # per-slot PV noise amplitude

    def __post_init__(self) -> None:
        if self.slp not in SLP_TYPES:
            raise ValueError(f"unknown standard load profile {self.slp!r}; one of {SLP_TYPES}")
        if self.annual_kwh < 0 or self.pv_wp < 0:
            raise ValueError("annual_kwh and pv_wp must be >= 0")
        for n in (self.noise_permille, self.daily_noise_permille, self.pv_noise_permille):
            if not 0 <= n < 1000:
                raise ValueError("noise amplitudes must be in [0, 1000) per mille")


@dataclass(frozen=True, slots=True)
class Profile:
    """A member's 15-min energies for one local day (integers, Wh)."""

    member_id: str
    day: date
    slots: tuple[datetime, ...]  # slot starts, aware UTC
    consumption_wh: tuple[int, ...]
    generation_wh: tuple[int, ...]

    @property
    def consumption_total(self) -> int:
        return sum(self.consumption_wh)

    @property
    def generation_total(self) -> int:
        return sum(self.generation_wh)


@dataclass(frozen=True, slots=True)
class Hour:
    """One delivery product's energies for one member."""

    product_id: str
    start: datetime
    consumption_wh: int
    generation_wh: int


# --------------------------------------------------------------------------- calendar helpers


def day_slots(day: date, tz: str = COMMUNITY_TZ, minutes: int = SLOT_MINUTES) -> tuple[datetime, ...]:
    """Starts (aware UTC) of the ``minutes`` slots of local day ``day``."""
    zone = ZoneInfo(tz)
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    n = int((end - start) / timedelta(minutes=minutes))
    return tuple(start + timedelta(minutes=minutes * i) for i in range(n))


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


def german_holidays(year: int) -> tuple[date, ...]:
    """Germany's nationwide public holidays of ``year`` (regional ones left out)."""
    e = easter_sunday(year)
    return tuple(sorted((
        date(year, 1, 1), e - timedelta(days=2), e + timedelta(days=1), date(year, 5, 1),
        e + timedelta(days=39), e + timedelta(days=50), date(year, 10, 3), date(year, 12, 25), date(year, 12, 26),
    )))


# --------------------------------------------------------------------------- library boundary (floats -> ints)


@lru_cache(maxsize=4)
def _slp_year(year: int, holidays: tuple[date, ...]):
    """demandlib's normalised SLP frame for ``year`` (naive local wall time index)."""
    # demandlib calls warnings.simplefilter("error") at module level of its
    # profile builder, which would turn every later warning of the process into
    # an exception; keep its filters to itself.
    with warnings.catch_warnings():
        from demandlib import bdew  # noqa: PLC0415 - optional dependency (extra community)

        slp = bdew.ElecSlp(year, holidays=list(holidays))
        frame = slp.get_profiles(*(t if t != "h0" else "h0_dyn" for t in SLP_TYPES))
    frame = frame.rename(columns={"h0_dyn": "h0"})
    # dynamisation keeps the year's sum at ~1 but not exactly; renormalise
    return frame.div(frame.sum(axis=0), axis=1)


@lru_cache(maxsize=256)
def slp_day_ppt(slp: str, day: date, tz: str = COMMUNITY_TZ, holidays: tuple[date, ...] | None = None) -> tuple[int, ...]:
    """The SLP's share of the annual energy per 15-min slot of local ``day``, in parts per 10**12.

    Each UTC slot is looked up at its local wall time; on the spring DST day
    the skipped local hour has no slot, on the autumn day the repeated local
    hour is used twice. The one float->int conversion: ``round(x * 10**12)``.
    """
    if slp not in SLP_TYPES:
        raise ValueError(f"unknown standard load profile {slp!r}")
    hol = german_holidays(day.year) if holidays is None else holidays
    frame = _slp_year(day.year, hol)
    col = frame[slp]
    zone = ZoneInfo(tz)
    values = []
    for s in day_slots(day, tz):
        local = s.astimezone(zone).replace(tzinfo=None)
        values.append(round(float(col.at[local]) * PPT))
    return tuple(values)


@lru_cache(maxsize=256)
def pv_day_mwh_per_kwp(day: date, location: Location, tilt: int = 30, azimuth: int = 180) -> tuple[int, ...]:
    """Clear-sky PV energy per 15-min slot of local ``day`` for 1 kWp, in integer mWh.

    Averages the power at five instants inside each slot. The one float->int
    conversion: ``round(mean_w * 0.25 h * 1000)``.
    """
    import pandas as pd  # noqa: PLC0415 - optional dependency (extra community)
    import pvlib  # noqa: PLC0415 - optional dependency (extra community)

    slots = day_slots(day, location.timezone)
    sub = 5
    step = SLOT_MINUTES * 60 / sub
    times = pd.DatetimeIndex([s + timedelta(seconds=step * (k + 0.5)) for s in slots for k in range(sub)])
    loc = pvlib.location.Location(location.latitude, location.longitude, tz="UTC", altitude=location.altitude_m)
    sp = loc.get_solarposition(times)
    cs = loc.get_clearsky(times, model="ineichen", solar_position=sp)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=tilt, surface_azimuth=azimuth, solar_zenith=sp["apparent_zenith"], solar_azimuth=sp["azimuth"],
        dni=cs["dni"], ghi=cs["ghi"], dhi=cs["dhi"], model="isotropic",
    )["poa_global"].fillna(0.0).clip(lower=0.0)
    t_air = MONTHLY_AIR_TEMP_C[day.month - 1]
    t_cell = pvlib.temperature.faiman(poa, t_air, wind_speed=1.0)
    pdc = pvlib.pvsystem.pvwatts_dc(poa, t_cell, pdc0=1000.0, gamma_pdc=PV_GAMMA_PDC) * (1 - PV_SYSTEM_LOSSES)
    watts = pdc.clip(lower=0.0).to_numpy().reshape(len(slots), sub).mean(axis=1)
    hours = SLOT_MINUTES / 60
    return tuple(round(float(w) * hours * 1000) for w in watts)


# --------------------------------------------------------------------------- profiles (integers from here on)


def _rng(seed: int, member_id: str, day: date, what: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.seed: stable across runs and platforms
    return random.Random(f"{seed}|{member_id}|{day.isoformat()}|{what}")


def member_profile(member: Member, day: date, location: Location | None = None, seed: int = 0,
                   clearness_permille: int = 1000, holidays: tuple[date, ...] | None = None) -> Profile:
    """``member``'s 15-min consumption and generation (integer Wh) for local ``day``.

    ``clearness_permille`` scales the clear-sky PV of the whole day (1000 =
    clear sky). Deterministic for (member, day, seed).
    """
    loc = location or Location()
    if not 0 <= clearness_permille <= 1000:
        raise ValueError("clearness_permille must be in [0, 1000]")
    slots = day_slots(day, loc.timezone)
    ppt = slp_day_ppt(member.slp, day, loc.timezone, holidays)
    annual_wh = member.annual_kwh * 1000
    rng = _rng(seed, member.member_id, day, "consumption")
    dn, sn = member.daily_noise_permille, member.noise_permille
    daily = 1000 + rng.randint(-dn, dn)
    cons = tuple(div_half_even(annual_wh * p * daily * (1000 + rng.randint(-sn, sn)), PPT * 1000 * 1000)
                 for p in ppt)
    if member.pv_wp:
        curve = pv_day_mwh_per_kwp(day, loc, member.pv_tilt, member.pv_azimuth)
        rng = _rng(seed, member.member_id, day, "pv")
        pn = member.pv_noise_permille
        gen = tuple(div_half_even(c * member.pv_wp * clearness_permille * (1000 + rng.randint(-pn, pn)),
                                  1000 * 1000 * 1000 * 1000) if c else 0
                    for c in curve)
    else:
        gen = (0,) * len(slots)
    return Profile(member.member_id, day, slots, cons, gen)


def community_profiles(members: Iterable[Member], day: date, location: Location | None = None, seed: int = 0,
                       clearness_permille: int = 1000) -> dict[str, Profile]:
    """Profiles of all ``members`` for local ``day``, keyed by member id, in input order."""
    return {m.member_id: member_profile(m, day, location, seed, clearness_permille) for m in members}


def hourly(profile: Profile, minutes: int = 60) -> list[Hour]:
    """Aggregate a profile's slots into delivery products of ``minutes`` (UTC-aligned), in order."""
    if minutes % SLOT_MINUTES or 1440 % minutes:
        raise ValueError("product minutes must be a multiple of 15 dividing a day")
    out: list[Hour] = []
    step = minutes * US_PER_MIN
    for s, c, g in zip(profile.slots, profile.consumption_wh, profile.generation_wh):
        start_us = to_us(s) // step * step
        if out and out[-1].start == _dt(start_us):
            h = out[-1]
            out[-1] = Hour(h.product_id, h.start, h.consumption_wh + c, h.generation_wh + g)
        else:
            out.append(Hour(product_id_for(start_us, minutes), _dt(start_us), c, g))
    return out


def hourly_table(profiles: dict[str, Profile], minutes: int = 60) -> dict[str, dict[str, tuple[int, int]]]:
    """member -> product id -> (consumption Wh, generation Wh): the input of :mod:`clients.community.kpis`."""
    return {mid: {h.product_id: (h.consumption_wh, h.generation_wh) for h in hourly(p, minutes)}
            for mid, p in profiles.items()}


def _dt(us: int) -> datetime:
    return from_us(us)


# --------------------------------------------------------------------------- community generator


@dataclass(frozen=True, slots=True)
class CommunityMix:
    """Shares (per mille) of the member kinds besides the one aggregator."""

    consumers: int = 450
    prosumers: int = 350
    battery_owners: int = 200

    def __post_init__(self) -> None:
        if min(self.consumers, self.prosumers, self.battery_owners) < 0 or \
                self.consumers + self.prosumers + self.battery_owners != 1000:
            raise ValueError("community mix shares must be >= 0 and sum to 1000 per mille")


# (slp, annual kWh range, weight) of the consumption kinds
_CONSUMER_TYPES: tuple[tuple[str, int, int, int], ...] = (
    ("h0", 1_500, 5_500, 70),
    ("g0", 5_000, 30_000, 6),
    ("g1", 8_000, 40_000, 5),
    ("g2", 8_000, 30_000, 3),
    ("g3", 20_000, 80_000, 2),
    ("g4", 10_000, 40_000, 5),
    ("g5", 10_000, 50_000, 3),
    ("g6", 5_000, 25_000, 2),
    ("l0", 10_000, 60_000, 4),
)
_AZIMUTHS = (135, 180, 180, 180, 225)  # few orientations: the PV curve cache stays small


def make_community(n_members: int, seed: int = 0, ids: Sequence[str] | None = None,
                   mix: CommunityMix | None = None) -> list[Member]:
    """A deterministic mix of members: one aggregator (first), then consumers,
    prosumers (PV) and battery owners (PV + battery) in the ``mix`` shares,
    interleaved pseudo-randomly.

    ``ids``: the members' identifiers (e.g. Ethereum addresses), default
    ``m000``, ``m001``, ...; ``len(ids)`` must equal ``n_members``. PV is
    sized to the consumption (about 1 kWp per 1000 kWh/a, 0.6-1.6x), batteries
    to the PV (about 1-2 kWh per kWp).
    """
    if n_members < 1:
        raise ValueError("a community needs at least one member (the aggregator)")
    if ids is None:
        ids = [f"m{i:03d}" for i in range(n_members)]
    if len(ids) != n_members or len(set(ids)) != n_members:
        raise ValueError("ids must be n_members distinct identifiers")
    mix = mix or CommunityMix()
    rng = random.Random(f"community|{seed}|{n_members}")
    rest = n_members - 1
    n_cons = rest * mix.consumers // 1000
    n_pros = rest * mix.prosumers // 1000
    kinds = ["consumer"] * n_cons + ["prosumer"] * n_pros + ["battery"] * (rest - n_cons - n_pros)
    rng.shuffle(kinds)
    members = [Member(
        ids[0], "aggregator", "g0", 12_000, pv_wp=30_000, pv_azimuth=180,
        battery=Battery(capacity_wh=200_000, power_w=50_000, efficiency=Fraction(9, 10), min_soc_wh=20_000,
                        initial_soc_wh=100_000),
    )]
    weights = [w for *_, w in _CONSUMER_TYPES]
    for mid, kind in zip(ids[1:], kinds):
        slp, lo, hi, _ = rng.choices(_CONSUMER_TYPES, weights)[0]
        annual = rng.randrange(lo, hi + 1, 100)
        pv_wp = 0
        battery = None
        azimuth = rng.choice(_AZIMUTHS)
        if kind != "consumer":
            pv_wp = annual * rng.randint(600, 1600) // 1000 // 100 * 100  # Wp, multiple of 100
            pv_wp = max(pv_wp, 1_000)
        if kind == "battery":
            cap = pv_wp * rng.randint(1000, 2000) // 1000 // 500 * 500  # Wh
            cap = max(cap, 2_500)
            battery = Battery(capacity_wh=cap, power_w=max(cap // 2 // 100 * 100, 1_000),
                              efficiency=Fraction(rng.choice((85, 88, 90, 92)), 100),
                              min_soc_wh=cap // 10, initial_soc_wh=cap // 2)
        members.append(Member(mid, kind, slp, annual, pv_wp=pv_wp, pv_azimuth=azimuth, battery=battery))
    return members


__all__ = [
    "COMMUNITY_TZ", "Battery", "CommunityMix", "Hour", "Location", "Member", "Profile", "SLP_TYPES",
    "community_profiles", "day_slots", "div_half_even", "german_holidays", "hourly", "hourly_table",
    "make_community", "member_profile", "pv_day_mwh_per_kwp", "slp_day_ppt",
]
