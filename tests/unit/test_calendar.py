"""Product calendar (exchange.core.calendar) and unit helpers (exchange.core.units)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from exchange.core.calendar import (
    Calendar,
    CalendarConfig,
    GateMode,
    Product,
    ProductState,
    is_product_edge,
    product_edge_at_or_before,
    product_id_for,
)
from exchange.core.units import (
    US_PER_MIN,
    eur,
    eur_cents_half_even,
    from_us,
    iso,
    money,
    price_eur_per_mwh,
    price_ticks,
    to_us,
)

pytestmark = pytest.mark.unit

AMS = ZoneInfo("Europe/Amsterdam")
UTC = UTC
NORMAL_DAY = date(2026, 11, 22)
SPRING_FORWARD = date(2026, 3, 29)
FALL_BACK = date(2026, 10, 25)


def cal(**kw) -> Calendar:
    return Calendar(CalendarConfig(**kw))


def local(us: int, zone=AMS) -> datetime:
    return from_us(us).astimezone(zone)


# --------------------------------------------------------------------------- product counts


@pytest.mark.parametrize(
    ("day", "count"),
    [(NORMAL_DAY, 24), (SPRING_FORWARD, 23), (FALL_BACK, 25), (date(2026, 3, 28), 24), (date(2026, 10, 26), 24)],
)
def test_hourly_product_count_in_amsterdam(day, count):
    products = cal().products(day)
    assert len(products) == count
    assert all(p.minutes == 60 for p in products)


@pytest.mark.parametrize(("day", "count"), [(NORMAL_DAY, 96), (SPRING_FORWARD, 92), (FALL_BACK, 100)])
def test_quarter_hour_product_count(day, count):
    products = cal(product_minutes=15).products(day)
    assert len(products) == count
    assert all(p.minutes == 15 for p in products)


@pytest.mark.parametrize("day", [NORMAL_DAY, SPRING_FORWARD, FALL_BACK])
def test_utc_zone_always_has_24_products(day):
    assert len(cal(timezone="UTC").products(day)) == 24
    assert len(cal(timezone="UTC", product_minutes=15).products(day)) == 96


@pytest.mark.parametrize("day", [NORMAL_DAY, SPRING_FORWARD, FALL_BACK])
def test_products_tile_the_local_day(day):
    products = cal().products(day)
    assert local(products[0].start_us) == datetime.combine(day, time(0), tzinfo=AMS)
    assert local(products[-1].end_us) == datetime.combine(day + timedelta(days=1), time(0), tzinfo=AMS)
    assert local(products[0].start_us).time() == time(0)
    assert local(products[-1].end_us).time() == time(0)
    for a, b in zip(products, products[1:]):
        assert a.end_us == b.start_us
    assert all(p.delivery_day == day for p in products)
    assert all(p.end_us - p.start_us == 60 * US_PER_MIN for p in products)


def test_spring_forward_day_skips_local_two_oclock():
    hours = [local(p.start_us).hour for p in cal().products(SPRING_FORWARD)]
    assert hours == [0, 1] + list(range(3, 24))


def test_fall_back_day_repeats_local_two_oclock():
    hours = [local(p.start_us).hour for p in cal().products(FALL_BACK)]
    assert hours == [0, 1, 2, 2] + list(range(3, 24))


def test_local_midnight_in_utc():
    p = cal().products(NORMAL_DAY)[0]
    assert from_us(p.start_us) == datetime(2026, 11, 21, 23, tzinfo=UTC)
    p = cal().products(date(2026, 7, 1))[0]
    assert from_us(p.start_us) == datetime(2026, 6, 30, 22, tzinfo=UTC)


# --------------------------------------------------------------------------- gates and opening


@pytest.mark.parametrize("day", [NORMAL_DAY, SPRING_FORWARD, FALL_BACK, date(2026, 3, 30), date(2026, 10, 26)])
def test_day_ahead_gate_is_d_minus_1_noon_local_for_all_products(day):
    products = cal().products(day)
    gates = {p.gate_us for p in products}
    assert len(gates) == 1
    g = local(gates.pop())
    assert g.date() == day - timedelta(days=1)
    assert g.time() == time(12, 0)


def test_day_ahead_gate_custom_local_time():
    products = cal(gate_day_ahead_local_time=time(10, 30)).products(NORMAL_DAY)
    assert {local(p.gate_us).replace(tzinfo=None) for p in products} == {datetime(2026, 11, 21, 10, 30)}


def test_open_time_is_local_midnight_days_before():
    products = cal().products(NORMAL_DAY)
    assert {p.open_us for p in products} == {to_us(datetime(2026, 11, 21, 0, 0, tzinfo=AMS))}
    for n in (0, 1, 2):
        midnight = to_us(datetime.combine(NORMAL_DAY - timedelta(days=n), time(0), tzinfo=AMS))
        products = cal(open_days_before=n, gate=GateMode.ROLLING).products(NORMAL_DAY)
        for p in products:
            # opening never comes after the gate
            assert p.open_us == min(midnight, p.gate_us)
        assert cal(open_days_before=n, gate=GateMode.ROLLING).day_open_us(NORMAL_DAY) == midnight


def test_day_ahead_gate_needs_opening_the_day_before():
    with pytest.raises(ValueError, match="at least one day before"):
        cal(open_days_before=0)


@pytest.mark.parametrize("minutes", [0, 5, 60, 90])
def test_rolling_gate_is_start_minus_n_minutes(minutes):
    products = cal(gate=GateMode.ROLLING, gate_rolling_minutes=minutes).products(FALL_BACK)
    assert len(products) == 25
    for p in products:
        assert p.gate_us == p.start_us - minutes * US_PER_MIN
        assert p.open_us <= p.gate_us


def test_rolling_gate_before_open_time_opens_no_later_than_gate():
    # open at local midnight of the delivery day (open_days_before=0) and a 2 h
    # rolling gate: the first products' gate is before the nominal opening.
    products = cal(gate=GateMode.ROLLING, gate_rolling_minutes=120, open_days_before=0).products(NORMAL_DAY)
    for p in products:
        assert p.open_us <= p.gate_us


@pytest.mark.parametrize("kw", [{"product_minutes": 7}, {"product_minutes": 25}, {"gate_rolling_minutes": -1},
                                {"open_days_before": -1}, {"timezone": "Mars/Olympus_Mons"}])
def test_invalid_calendar_configs(kw):
    with pytest.raises(Exception):
        CalendarConfig(**kw)


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("minutes", [15, 30, 60])
@pytest.mark.parametrize("day", [NORMAL_DAY, SPRING_FORWARD, FALL_BACK])
def test_product_ids_unique_and_ordered(day, minutes):
    products = cal(product_minutes=minutes).products(day)
    ids = [p.product_id for p in products]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert [p.start_us for p in products] == sorted(p.start_us for p in products)
    for p in products:
        assert p.product_id == product_id_for(p.start_us, minutes)
        assert p.product_id.endswith(f"Z-{minutes}")


def test_product_ids_unique_across_consecutive_days():
    c = cal()
    ids = [p.product_id for d in range(-3, 4) for p in c.products(FALL_BACK + timedelta(days=d))]
    assert len(ids) == len(set(ids)) == 24 * 6 + 25
    assert ids == sorted(ids)


def test_product_id_format():
    assert product_id_for(to_us(datetime(2026, 11, 21, 23, tzinfo=UTC)), 60) == "20261121T2300Z-60"
    assert cal().products(NORMAL_DAY)[0].product_id == "20261121T2300Z-60"


# --------------------------------------------------------------------------- states


def test_state_at_transitions():
    p = cal().products(NORMAL_DAY)[5]
    assert p.open_us < p.gate_us < p.start_us < p.end_us
    assert p.state_at(p.open_us - 1) is ProductState.PRE_OPEN
    assert p.state_at(p.open_us) is ProductState.OPEN
    assert p.state_at(p.gate_us - 1) is ProductState.OPEN
    assert p.state_at(p.gate_us) is ProductState.CLOSED
    assert p.state_at(p.start_us) is ProductState.CLOSED
    assert p.state_at(p.end_us - 1) is ProductState.CLOSED
    assert p.state_at(p.end_us) is ProductState.DELIVERED
    assert p.state_at(p.end_us + 10**12) is ProductState.DELIVERED


def test_product_to_dict_and_minutes():
    p = Product("x", NORMAL_DAY, 0, 15 * US_PER_MIN, -10, -5)
    assert p.minutes == 15
    d = cal().products(NORMAL_DAY)[0].to_dict()
    assert d["product_id"] == "20261121T2300Z-60"
    assert d["delivery_day"] == "2026-11-22"
    assert datetime.fromisoformat(d["start"]) == datetime(2026, 11, 21, 23, tzinfo=UTC)
    assert datetime.fromisoformat(d["gate"]) == datetime(2026, 11, 21, 11, tzinfo=UTC)


def test_local_date():
    c = cal()
    assert c.local_date(to_us(datetime(2026, 11, 21, 23, 30, tzinfo=UTC))) == date(2026, 11, 22)
    assert c.local_date(to_us(datetime(2026, 11, 21, 22, 59, tzinfo=UTC))) == date(2026, 11, 21)


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "dt",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 3, 1, 12, tzinfo=UTC),
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
        datetime(2026, 10, 25, 2, 30, tzinfo=AMS),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=AMS),
    ],
)
def test_to_us_from_us_round_trip(dt):
    us = to_us(dt)
    assert isinstance(us, int)
    # (compare in UTC: PEP 495 makes inter-zone == False for ambiguous local times)
    assert from_us(us) == dt.astimezone(UTC)
    assert from_us(us).utcoffset() == timedelta(0)
    assert to_us(from_us(us)) == us


def test_to_us_known_values():
    assert to_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_us(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005
    assert to_us(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1
    assert to_us(datetime(2026, 11, 21, 9, tzinfo=AMS)) == to_us(datetime(2026, 11, 21, 8, tzinfo=UTC))
    assert to_us(datetime(2026, 10, 25, 2, 30, tzinfo=AMS)) + 3600 * 10**6 == to_us(
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=AMS))


def test_naive_datetime_rejected():
    with pytest.raises(ValueError):
        to_us(datetime(2026, 11, 21, 8, 0))


def test_iso():
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(to_us(datetime(2026, 11, 21, 8, 0, 0, 5, tzinfo=UTC))) == "2026-11-21T08:00:00.000005Z"


@pytest.mark.parametrize(
    ("text", "ticks"),
    [("0", 0), ("80", 8000), ("80.5", 8050), ("80.55", 8055), ("-500", -50000), ("-0.01", -1), ("4000.00", 400000),
     ("0.10", 10), ("1e2", 10000), ("123456789.12", 12345678912), (Decimal("12.34"), 1234), (7, 700),
     ("12.3400000", 1234)],
)
def test_price_ticks_exact(text, ticks):
    assert price_ticks(text) == ticks
    assert isinstance(price_ticks(text), int)


@pytest.mark.parametrize("text", ["80.555", "0.001", "-0.005", Decimal("1.2345"), "1e-3"])
def test_price_ticks_rejects_sub_tick(text):
    with pytest.raises(ValueError):
        price_ticks(text)


def test_price_ticks_rejects_float():
    with pytest.raises(TypeError):
        price_ticks(80.5)


def test_price_eur_per_mwh_round_trip():
    for t in (0, 1, -1, 8055, -50000, 400000):
        assert price_ticks(price_eur_per_mwh(t)) == t


@pytest.mark.parametrize(
    ("units", "cents"),
    [(0, 0), (1_000_000, 1), (499_999, 0), (500_000, 0), (500_001, 1), (1_500_000, 2), (2_500_000, 2),
     (3_500_000, 4), (-500_000, 0), (-1_500_000, -2), (-2_500_000, -2), (-2_500_001, -3), (100_000_000, 100)],
)
def test_eur_cents_half_even(units, cents):
    assert eur_cents_half_even(units) == cents


def test_money_and_eur_exact():
    # 1 MWh at 80.55 EUR/MWh = 80.55 EUR
    m = money(1_000_000, price_ticks("80.55"))
    assert eur(m) == Decimal("80.55")
    assert eur_cents_half_even(m) == 8055
    assert eur(1) == Decimal("0.00000001")


@pytest.mark.parametrize("tz", ["Europe/Amsterdam", "Asia/Kolkata", "America/St_Johns"])
@pytest.mark.parametrize("minutes", [15, 30, 60])
@pytest.mark.parametrize("day", [date(2026, 11, 22), date(2026, 3, 29), date(2026, 10, 25)])  # DST days too
def test_product_edges_are_where_the_calendars_products_begin(tz, minutes, day):
    """Bills begin and end on these edges (metering): exactly the starts of Calendar.products."""
    c = cal(timezone=tz, product_minutes=minutes)
    products = c.products(day)
    starts = [p.start_us for p in products]
    zone = ZoneInfo(tz)
    for p in products:
        assert is_product_edge(p.start_us, zone, minutes)
        assert product_edge_at_or_before(p.start_us + 1, zone, minutes) == p.start_us
        assert product_edge_at_or_before(p.end_us - 1, zone, minutes) == p.start_us
        assert not is_product_edge(p.start_us + 5 * 60_000_000, zone, minutes)
    assert products[-1].end_us == c.products(day + timedelta(days=1))[0].start_us
    assert len(starts) == len(set(starts))
