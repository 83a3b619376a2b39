"""The bots' meter readings (clients.community.meters): the quarter-hour split, the seeded
forecast error, the readings of a member's points; the runner's tariff conversion and its
KPI block from meters (clients.bots.runner). The readings against a real exchange:
tests/e2e/test_bots.py."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.bots.prosumer import FEED_IN_TICKS, RETAIL_TICKS, CommunityData
from clients.bots.runner import ct_per_kwh, format_kpis
from clients.community.meters import (
    HOUR_US,
    error_permille,
    member_readings,
    point_ids,
    split_even,
    with_error,
)
from exchange.core.calendar import product_id_for
from exchange.core.units import US_PER_MIN, iso, to_us

pytestmark = pytest.mark.unit

T = to_us(datetime(2026, 6, 21, 10, 0, tzinfo=UTC))
ADDR = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"


# --------------------------------------------------------------------------- the quarter-hour split


def test_split_even_examples():
    assert split_even(10, 4) == [3, 3, 2, 2]
    assert split_even(3, 4) == [1, 1, 1, 0]
    assert split_even(0, 4) == [0, 0, 0, 0]
    assert split_even(400, 4) == [100] * 4
    assert split_even(7, 1) == [7]
    with pytest.raises(ValueError):
        split_even(-1, 4)
    with pytest.raises(ValueError):
        split_even(1, 0)


@given(st.integers(0, 10**12), st.integers(1, 60))
def test_split_even_is_exact_and_even(total, parts):
    q = split_even(total, parts)
    assert len(q) == parts and sum(q) == total and all(isinstance(x, int) for x in q)
    assert max(q) - min(q) <= 1 and q == sorted(q, reverse=True)  # the remainder to the first ones


# --------------------------------------------------------------------------- the forecast error


def test_error_is_deterministic_per_member_interval_seed_and_quantity():
    e = error_permille(7, ADDR, T, "consumption", 150)
    assert e == error_permille(7, ADDR, T, "consumption", 150)  # the same inputs, the same error
    others = {error_permille(s, m, t, w, 150) for s in (7, 8) for m in (ADDR, "0x01") for t in (T, T + 15 * US_PER_MIN)
              for w in ("consumption", "generation")}
    assert len(others) > 8  # each input moves it
    errors = [error_permille(1, ADDR, T + i * 15 * US_PER_MIN, "consumption", 150) for i in range(2000)]
    assert min(errors) >= -150 and max(errors) <= 150 and min(errors) < -140 and max(errors) > 140
    assert abs(sum(errors)) < 2000 * 10  # centred on zero
    assert {error_permille(1, ADDR, T, "generation", 0)} == {0}
    with pytest.raises(ValueError):
        error_permille(1, ADDR, T, "consumption", 1000)


@given(st.integers(0, 10**9), st.integers(-999, 999))
def test_with_error_is_a_non_negative_integer(value, error):
    v = with_error(value, error)
    assert isinstance(v, int) and v >= 0
    assert abs(v * 1000 - value * (1000 + error)) <= 500  # rounded to the nearest Wh


def test_with_error_rounds_half_to_even_and_refuses_negative_energy():
    assert with_error(5, 100) == 6 and with_error(15, 100) == 16  # 5.5 -> 6, 16.5 -> 16
    assert with_error(0, 150) == 0 and with_error(1000, -150) == 850
    with pytest.raises(ValueError):
        with_error(-1, 0)


# --------------------------------------------------------------------------- a member's readings


def test_point_ids_from_the_address():
    assert point_ids(ADDR, False) == {"import": "0xabcdef01-imp", "export": "0xabcdef01-exp"}
    assert point_ids(ADDR, True)["generation"] == "0xabcdef01-pv"


def _hours(values: dict[int, tuple[int, int]]):
    return lambda h: values.get(h, (0, 0))


def test_readings_without_error_split_each_hour_exactly():
    forecast = {T: (1003, 0), T + HOUR_US: (400, 1001)}
    rows = member_readings(ADDR, point_ids(ADDR, True), _hours(forecast), T, T + 2 * HOUR_US, 1, error_amplitude=0)
    by = {(r["point_id"], r["interval_start"]): r["energy_wh"] for r in rows}
    q = [iso(T + i * 15 * US_PER_MIN) for i in range(8)]
    assert [by["0xabcdef01-imp", t] for t in q[:4]] == [251, 251, 251, 250]  # 1003 Wh: remainder first
    assert [by["0xabcdef01-pv", t] for t in q[4:]] == [251, 250, 250, 250]
    # behind one connection: consumption and generation net out per quarter-hour
    assert [by["0xabcdef01-imp", t] for t in q[4:]] == [0, 0, 0, 0]
    assert [by["0xabcdef01-exp", t] for t in q[4:]] == [151, 150, 150, 150]
    assert len(rows) == 8 * 3


def test_readings_with_error_are_deterministic_integers_and_meter_the_consumption():
    forecast = {T + k * HOUR_US: (800 + 37 * k, 300 * (k % 3)) for k in range(6)}
    pts = point_ids(ADDR, True)
    end = T + 6 * HOUR_US
    rows = member_readings(ADDR, pts, _hours(forecast), T, end, 42)
    assert rows == member_readings(ADDR, pts, _hours(forecast), T, end, 42)
    assert rows != member_readings(ADDR, pts, _hours(forecast), T, end, 43)
    assert all(isinstance(r["energy_wh"], int) and r["energy_wh"] >= 0 for r in rows)
    by = {(r["point_id"], r["interval_start"]): r["energy_wh"] for r in rows}
    for i in range(24):
        t = T + i * 15 * US_PER_MIN
        h = t - t % HOUR_US
        c0 = split_even(forecast[h][0], 4)[(t - h) // (15 * US_PER_MIN)]
        g0 = split_even(forecast[h][1], 4)[(t - h) // (15 * US_PER_MIN)]
        c = with_error(c0, error_permille(42, ADDR, t, "consumption", 150))
        g = with_error(g0, error_permille(42, ADDR, t, "generation", 150))
        imp, exp, gen = (by[pts[k], iso(t)] for k in ("import", "export", "generation"))
        assert (imp - exp, gen, min(imp, exp)) == (c - g, g, 0)
        assert imp + gen - exp == c  # what the exchange's KPIs call consumption
    # a consumer's import meter reads its consumption; a window inside the hours reads the same values
    cons = member_readings(ADDR, point_ids(ADDR, False), _hours(forecast), T, end, 42)
    assert {r["point_id"] for r in cons} == {"0xabcdef01-imp", "0xabcdef01-exp"}
    part = member_readings(ADDR, pts, _hours(forecast), T + 45 * US_PER_MIN, T + 90 * US_PER_MIN, 42)
    assert all(by[r["point_id"], r["interval_start"]] == r["energy_wh"] for r in part) and len(part) == 9


def test_readings_refuse_off_grid_periods():
    with pytest.raises(ValueError):
        member_readings(ADDR, point_ids(ADDR, False), _hours({}), T + 1, T + HOUR_US, 1)
    with pytest.raises(ValueError):
        member_readings(ADDR, point_ids(ADDR, False), _hours({}), T, T + HOUR_US, 1, interval_minutes=7)


def test_community_data_hour_energy_is_the_bots_forecast():
    data = CommunityData([ADDR, "0x" + "11" * 20, "0x" + "22" * 20], seed=3, tz="Europe/Berlin")
    day = date(2026, 6, 21)
    table = data.table(day)
    hour = to_us(datetime(2026, 6, 21, 10, 0, tzinfo=UTC))
    assert data.hour_energy(ADDR, hour) == table[ADDR][product_id_for(hour, 60)]
    # 23:00 UTC is the next local day in Berlin: its own table
    late = to_us(datetime(2026, 6, 21, 23, 0, tzinfo=UTC))
    assert data.hour_energy(ADDR, late) == data.table(date(2026, 6, 22))[ADDR][product_id_for(late, 60)]
    assert data.hour_energy("0x" + "99" * 20, hour) == (0, 0)


# --------------------------------------------------------------------------- the runner's side


def test_ticks_as_ct_per_kwh():
    assert (ct_per_kwh(RETAIL_TICKS), ct_per_kwh(FEED_IN_TICKS)) == ("30", "8")
    assert [ct_per_kwh(t) for t in (30_001, 12_345, 100, 0, 8_050)] == ["30.001", "12.345", "0.1", "0", "8.05"]
    with pytest.raises(ValueError):
        ct_per_kwh(-1)


def _money(units: int) -> dict:
    return {"units": str(units), "eur": "x"}


READINGS = {"pushed": 930, "messages": 96, "failures": 0, "members": 24, "disabled": {}, "unmetered_batteries": 0}


def test_format_kpis_from_meters():
    community = {"consumption_wh": 94_123, "generation_wh": 381_200, "grid_import_wh": 1_250, "grid_export_wh": 287_100,
                 "self_consumed_wh": 94_100, "peak_import_wh": 500, "peak_import_w": 2_000, "p2p_bought_wh": 40_000,
                 "estimated_intervals": 0, "self_sufficiency_ppm": 986_719, "self_consumption_ppm": 246_852,
                 "p2p_share_ppm": 424_975, "savings": _money(163_000_000)}
    k = {"source": "meters", "note": None, "readings": READINGS, "timezone": "Europe/Berlin",
         "start": "2026-06-21T08:00:00Z", "end": "2026-06-21T11:45:00Z", "interval_minutes": 15, "intervals": 15,
         "members": 24, "community": community,
         "bills": {"count": 24, "new": 24, "total": _money(-1_147_000_000), "community": _money(137_000_000)},
         "forecast": None}
    assert format_kpis(k) == [
        "community KPIs from meters: 24 members, 15 intervals of 15 min (Sun 2026-06-21 10:00 to 13:45 CEST); "
        "930 readings pushed by 24 members' meters",
        "  self-sufficiency  98.67 % (consumption 94.1 kWh, community grid import 1.2 kWh)",
        "  self-consumption  24.69 % of PV generation 381.2 kWh",
        "  grid              import 1.2 kWh, export 287.1 kWh (the community behind one connection)",
        "  peak import       2.0 kW (0.5 kWh in one interval)",
        "  P2P share         42.50 % of consumption bought P2P (40.0 kWh)",
        "  savings           EUR 1.63 vs grid-only (the bills' counterfactual)",
        "  bills             24 issued (24 new), total EUR -11.47, of which EUR 1.37 to the community",
    ]
    k["readings"] = {**READINGS, "unmetered_batteries": 5}
    assert format_kpis(k)[-1].startswith("  batteries         5 not metered")


def test_format_kpis_without_meters_says_why():
    k = {"source": None, "note": "the KPIs from meters need an operator token (--operator-token): ...",
         "readings": {**READINGS, "pushed": 0, "members": 0, "disabled": {"no import metering point": 24}},
         "timezone": None, "forecast": None}
    assert format_kpis(k) == [
        "community KPIs from meters: none (the KPIs from meters need an operator token (--operator-token): ...); "
        "0 readings pushed by 0 members' meters, 24 meters off (no import metering point)"]
