"""Meter readings of community members: their profile plus a seeded forecast error (pure).

What a member's smart meter would have measured in a delivered interval: the member's
forecast (its hourly community profile, :mod:`clients.community.profiles`) split exactly
into the metering intervals, then moved by a *forecast error* that is deterministic per
member, interval and seed. Readings are integers (Wh), never negative.

* :func:`split_even`: an hour's Wh into its quarter-hours (integer split, the remainder
  to the first ones: 10 Wh -> 3, 3, 2, 2).
* :func:`error_permille`: the error of one value, uniform in ``[-amplitude, +amplitude]``
  per mille, from SHA-256 of ``meter|seed|member|interval start (us)|what`` (stable across
  runs, processes and platforms).
* :func:`member_readings`: the readings of a member's points for ``[start, end)``, behind
  one grid connection: consumption ``c`` and generation ``g`` (each with its own error)
  net out per interval, so ``import = max(c - g, 0)``, ``export = max(g - c, 0)`` and the
  generation meter (a PV member's) reads ``g``. The metered consumption, ``import +
  generation - export``, is then ``c``. Batteries are not metered (the profiles are
  battery-free).

The readings are dicts of the metering protocol (``{"point_id", "interval_start",
"energy_wh"}``, docs/metering.md), ready for a ``meter_readings`` WebSocket message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from exchange.core.units import US_PER_MIN, div_half_even, iso

__all__ = ["FORECAST_ERROR_PERMILLE", "HOUR_US", "METER_INTERVAL_MINUTES", "error_permille", "member_readings",
           "point_ids", "split_even", "with_error"]

#: The metering interval of the readings (the exchange's default ``metering_interval_minutes``).
METER_INTERVAL_MINUTES = 15
#: The forecast error's amplitude, per mille (+/-), of consumption and generation alike.
FORECAST_ERROR_PERMILLE = 150
HOUR_US = 60 * US_PER_MIN


def split_even(total: int, parts: int) -> list[int]:
    """``total`` (>= 0) in ``parts`` integers that sum to it exactly, the remainder to the first ones."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    if total < 0:
        raise ValueError("total must be >= 0")
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


def error_permille(seed: int | str, member_id: str, interval_start_us: int, what: str, amplitude: int) -> int:
    """The forecast error (per mille, in ``[-amplitude, amplitude]``) of ``what`` (``consumption`` or
    ``generation``) of ``member_id`` in the interval starting at ``interval_start_us``."""
    if not 0 <= amplitude < 1000:
        raise ValueError("the error amplitude must be in [0, 1000) per mille")
    digest = hashlib.sha256(f"meter|{seed}|{member_id}|{interval_start_us}|{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2 * amplitude + 1) - amplitude


def with_error(value_wh: int, error: int) -> int:
    """``value_wh`` moved by ``error`` per mille, rounded half to even: an integer >= 0."""
    if value_wh < 0:
        raise ValueError("energy must be >= 0")
    if not -1000 < error < 1000:
        raise ValueError("the error must be in (-1000, 1000) per mille")
    return div_half_even(value_wh * (1000 + error), 1000)


def point_ids(address: str, pv: bool) -> dict[str, str]:
    """A member's metering points, kind -> point id, derived from its address
    (``0xabcdef12-imp``, ``-exp`` and, with PV, ``-pv``)."""
    stem = address[:10].lower()
    out = {"import": f"{stem}-imp", "export": f"{stem}-exp"}
    if pv:
        out["generation"] = f"{stem}-pv"
    return out


def member_readings(member_id: str, points: Mapping[str, str], hour_energy: Callable[[int], tuple[int, int]],
                    start_us: int, end_us: int, seed: int | str, *,
                    interval_minutes: int = METER_INTERVAL_MINUTES,
                    error_amplitude: int = FORECAST_ERROR_PERMILLE) -> list[dict]:
    """The readings of ``member_id``'s ``points`` (kind -> point id: ``import``, ``export``,
    ``generation``; a kind without a point is not read) for the intervals of ``[start_us,
    end_us)``. ``hour_energy(hour_start_us)`` is the member's forecast of that (UTC) hour:
    (consumption Wh, generation Wh)."""
    step = interval_minutes * US_PER_MIN
    if HOUR_US % step:
        raise ValueError("the metering interval must divide an hour")
    if start_us % step or end_us % step:
        raise ValueError("start and end must be on the metering interval grid")
    n = HOUR_US // step
    out: list[dict] = []
    hour = None
    cons: list[int] = []
    gen: list[int] = []
    for t in range(start_us, end_us, step):
        h = t - t % HOUR_US
        if h != hour:
            hour = h
            c_h, g_h = hour_energy(h)
            cons, gen = split_even(c_h, n), split_even(g_h, n)
        i = (t - h) // step
        c = with_error(cons[i], error_permille(seed, member_id, t, "consumption", error_amplitude))
        g = with_error(gen[i], error_permille(seed, member_id, t, "generation", error_amplitude))
        ts = iso(t)
        values = {"import": max(c - g, 0), "export": max(g - c, 0), "generation": g}
        out += [{"point_id": points[kind], "interval_start": ts, "energy_wh": values[kind]}
                for kind in ("import", "export", "generation") if kind in points]
    return out
