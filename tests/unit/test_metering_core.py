"""The pure metering core (issue 14): delivery settlement, bills, fees and KPIs.

1. A worked fixture computed by hand (docs/metering.md, "Delivery settlement: a worked
   example"): three members, four quarter-hours, tariffs that vary by interval, three
   products, every fee type; every flow, bill line and total checked to the money unit,
   without and with a community imbalance price.
2. Self-sufficiency, self-consumption and CO2 avoided on the same meters, by hand.
3. Properties (hypothesis): energy and money balance, bill = sum of its lines,
   determinism, the ledger nets out, spread/estimate/positions/month-fraction rules, a
   correction changes only its own interval's contribution.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core.units import US_PER_MIN, UTC, to_us
from exchange.metering.core.bill import Line, bill, month_fraction, round_units
from exchange.metering.core.kpi import community_kpi, member_kpi, ratio_ppm
from exchange.metering.core.model import (
    Basis,
    FeeSchedule,
    Grid,
    MemberSeries,
    Payee,
    PeriodicFee,
    PerKwhFee,
    PointKind,
)
from exchange.metering.core.series import estimate, positions_on_grid, spread_flat, step_series
from exchange.metering.core.settle import (
    COMMUNITY,
    SUPPLIER,
    Flows,
    Imbalanced,
    check_balance,
    ledger,
    settle_member,
)

pytestmark = pytest.mark.unit

TZ = ZoneInfo("Europe/Amsterdam")
Q = 15 * US_PER_MIN
HOUR = 60 * US_PER_MIN
#: 2025-06-10 10:00 UTC (12:00 in Amsterdam, CEST): four quarter-hours to 11:00 UTC
T0 = to_us(datetime(2025, 6, 10, 10, 0, tzinfo=UTC))
GRID = Grid(T0, Q, 4)

# =========================================================================== the worked fixture
#
# Members: "pv" (PV prosumer, sells; short of what it sold in intervals 1-3), "home" (a
# consumer, buys), "bat" (battery and a small generation meter; sells in the first half
# hour, buys in the second, short in interval 0).
#
# Products and trades (buyer <- seller, energy, price in ticks; 1 ct/kWh = 1 000 ticks):
#   A  30 min, intervals 0-1:  home <- pv   1 001 Wh at 20 000 (20 ct/kWh)
#   H  60 min, intervals 0-3:  home <- pv   1 202 Wh at 18 500
#                              home <- bat    800 Wh at 18 500
#   B  30 min, intervals 2-3:  bat  <- pv     600 Wh at 22 000
PRODUCTS = {"A": (T0, T0 + 2 * Q), "H": (T0, T0 + 4 * Q), "B": (T0 + 2 * Q, T0 + 4 * Q)}
TRADES = [("A", "home", "pv", 1_001, 20_000), ("H", "home", "pv", 1_202, 18_500),
          ("H", "home", "bat", 800, 18_500), ("B", "bat", "pv", 600, 22_000)]
MEMBERS = ("pv", "home", "bat")

# Meter readings (Wh per interval).
METERS = {
    "pv": {PointKind.IMPORT: [0, 0, 150, 0], PointKind.EXPORT: [1_000, 700, 0, 400],
           PointKind.GENERATION: [1_500, 1_400, 300, 900]},
    "home": {PointKind.IMPORT: [1_200, 900, 500, 700]},
    "bat": {PointKind.IMPORT: [0, 0, 80, 400], PointKind.EXPORT: [146, 300, 0, 0],
            PointKind.GENERATION: [400, 400, 0, 0], PointKind.STORAGE_CHARGE: [200, 0, 0, 0],
            PointKind.STORAGE_DISCHARGE: [0, 100, 250, 0]},
}

# Tariffs as change lists (from_us, ticks), as loaded from a tariff file.
#   "dynamic" (home): import 28/30/32/35 ct/kWh, feed-in 8/7/6/5 ct/kWh, one per quarter-hour
#   "tou" (pv, bat):  import 30 ct/kWh until 10:30 UTC, then 34; feed-in 7, then 6
DYNAMIC_IMPORT = [(T0 - HOUR, 25_000), (T0, 28_000), (T0 + Q, 30_000), (T0 + 2 * Q, 32_000), (T0 + 3 * Q, 35_000)]
DYNAMIC_FEED = [(T0, 8_000), (T0 + Q, 7_000), (T0 + 2 * Q, 6_000), (T0 + 3 * Q, 5_000)]
TOU_IMPORT = [(T0 - 10 * HOUR, 30_000), (T0 + 2 * Q, 34_000)]
TOU_FEED = [(T0 - 10 * HOUR, 7_000), (T0 + 2 * Q, 6_000)]
TARIFF_OF = {"pv": "tou", "home": "dynamic", "bat": "tou"}
CONTRACTED_W = {"pv": 7_000, "home": 5_500, "bat": 11_000}
IMBALANCE_TICKS = 40_000  # 40 ct/kWh, the second variant

#: every fee type: a per-kWh fee on each basis (two with a community reduction), three
#: community per-kWh fees, a fixed monthly fee and a contracted-power fee per kW
FEES = FeeSchedule(
    per_kwh=(
        PerKwhFee("grid_import_fee", 8_000, Basis.IMPORT, community_reduction_bp=5_000),
        PerKwhFee("grid_export_fee", 501, Basis.EXPORT, community_reduction_bp=2_500),
        PerKwhFee("taxes_surcharges", 2_000, Basis.IMPORT),
        PerKwhFee("supply_levy", 1_500, Basis.SUPPLIER_IMPORT),
        PerKwhFee("marketplace_fee", 500, Basis.P2P_TRADED, Payee.COMMUNITY),
        PerKwhFee("buyer_fee", 150, Basis.P2P_BOUGHT, Payee.COMMUNITY),
        PerKwhFee("seller_fee", 120, Basis.P2P_SOLD, Payee.COMMUNITY),
        PerKwhFee("service_fee", 200, Basis.IMPORT, Payee.COMMUNITY),
    ),
    periodic=(
        PeriodicFee("fixed_fee", 300_000_000, Payee.COMMUNITY),                       # 3 EUR / month
        PeriodicFee("contracted_power_fee", 150_000_000, Payee.SUPPLIER, per_kw=True),  # 1.50 EUR / kW / month
    ),
)
FEES_IMBALANCE = FeeSchedule(FEES.per_kwh, FEES.periodic, imbalance_ticks=IMBALANCE_TICKS)
#: a flexibility payout on bat's bill (an ``extra`` line, paid by the community)
FLEX = (Line("flex_payout", "community", -250_000, detail="battery held for the community"),)
INTENSITY = [300, 320, 350, 380]  # g CO2 / kWh per interval


def fixture_series() -> dict[str, MemberSeries]:
    out = {}
    for m in MEMBERS:
        s = MemberSeries.empty(m, GRID)
        for kind, values in METERS[m].items():
            s.add(kind, values)
        out[m] = s
    return out


def fixture_positions() -> dict[str, list[tuple[int, int, int]]]:
    pos: dict[str, list[tuple[int, int, int]]] = {m: [] for m in MEMBERS}
    for product, buyer, seller, wh, _ in TRADES:
        start, end = PRODUCTS[product]
        pos[buyer].append((start, end, wh))
        pos[seller].append((start, end, -wh))
    return pos


def fixture_money() -> dict[str, tuple[int, int]]:
    """(paid, received) per member from the trades."""
    paid = {m: 0 for m in MEMBERS}
    received = {m: 0 for m in MEMBERS}
    for _, buyer, seller, wh, price in TRADES:
        paid[buyer] += wh * price
        received[seller] += wh * price
    return {m: (paid[m], received[m]) for m in MEMBERS}


def tariffs() -> dict[str, tuple[list[int], list[int]]]:
    return {"dynamic": (step_series(DYNAMIC_IMPORT, GRID), step_series(DYNAMIC_FEED, GRID)),
            "tou": (step_series(TOU_IMPORT, GRID), step_series(TOU_FEED, GRID))}


def settle_fixture(imbalance_ticks: int | None) -> tuple[dict[str, Flows], dict[str, list[int]]]:
    series, positions, money, tar = fixture_series(), fixture_positions(), fixture_money(), tariffs()
    flows, grid_pos = {}, {}
    for m in MEMBERS:
        grid_pos[m] = positions_on_grid(positions[m], GRID)
        imp, feed = tar[TARIFF_OF[m]]
        flows[m] = settle_member(series[m], grid_pos[m], imp, feed, imbalance_ticks, *money[m])
    return flows, grid_pos


def test_fixture_inputs_tariffs_and_positions():
    assert tariffs() == {"dynamic": ([28_000, 30_000, 32_000, 35_000], [8_000, 7_000, 6_000, 5_000]),
                         "tou": ([30_000, 30_000, 34_000, 34_000], [7_000, 7_000, 6_000, 6_000])}
    # spread at constant power, the remainder 1 Wh at a time to the earliest intervals:
    #   A 1 001 / 2 = 500 r 1 -> 501, 500;  H 1 202 / 4 = 300 r 2 -> 301, 301, 300, 300
    #   H 800 / 4 -> 200 x 4;  B 600 / 2 -> 300, 300
    pos = {m: positions_on_grid(p, GRID) for m, p in fixture_positions().items()}
    assert pos == {
        "pv": [-501 - 301 - 0, -500 - 301, -300 - 300, -300 - 300],   # [-802, -801, -600, -600]
        "home": [501 + 301 + 200, 500 + 301 + 200, 300 + 200, 300 + 200],  # [1002, 1001, 500, 500]
        "bat": [-200, -200, -200 + 300, -200 + 300],                  # [-200, -200, 100, 100]
    }
    assert all(sum(p[i] for p in pos.values()) == 0 for i in range(4))
    # P2P money: home pays 1001 x 20000 + 2002 x 18500; pv receives 1001 x 20000 + 1202 x 18500
    # + 600 x 22000; bat receives 800 x 18500 and pays 600 x 22000
    assert fixture_money() == {"pv": (0, 20_020_000 + 22_237_000 + 13_200_000),     # 55 457 000
                               "home": (20_020_000 + 37_037_000, 0),                 # 57 057 000
                               "bat": (13_200_000, 14_800_000)}


# Per interval (N = import - export, P = position, R = N - P):
#   pv    N  -1000   -700    150   -400     P  -802   -801   -600   -600
#         R   -198    101    750    200     to_peers 802, 700, 0, 400   shortfall 0, 101, 600, 200
#   home  N   1200    900    500    700     P  1002   1001    500    500
#         R    198   -101      0    200     from_peers 1002, 900, 500, 500
#   bat   N   -146   -300     80    400     P  -200   -200    100    100
#         R     54   -100    -20    300     to_peers 146, 200, 0, 0  from_peers 0, 0, 80, 100  shortfall 54, 0, 0, 0
EXPECTED_FLOWS = {
    "pv": dict(
        import_wh=150, export_wh=1_000 + 700 + 400,                     # 2100
        bought_wh=0, sold_wh=802 + 801 + 600 + 600,                     # 2803
        from_peers_wh=0, to_peers_wh=802 + 700 + 0 + 400,               # 1902
        supplier_import_wh=101 + 750 + 200, supplier_export_wh=198,     # 1051, 198
        shortfall_wh=101 + 600 + 200,                                   # 901
        supplier_import_units=101 * 30_000 + 750 * 34_000 + 200 * 34_000,  # 35 330 000
        supplier_export_units=198 * 7_000,                              # 1 386 000
        shortfall_tariff_units=0, imbalance_units=0,
        grid_only_import_units=150 * 34_000,                            # 5 100 000
        grid_only_export_units=1_000 * 7_000 + 700 * 7_000 + 400 * 6_000,  # 14 300 000
        p2p_paid_units=0, p2p_received_units=55_457_000, intervals=4, estimated_intervals=0),
    "home": dict(
        import_wh=1_200 + 900 + 500 + 700, export_wh=0,                 # 3300
        bought_wh=1_002 + 1_001 + 500 + 500, sold_wh=0,                 # 3003
        from_peers_wh=1_002 + 900 + 500 + 500, to_peers_wh=0,           # 2902
        supplier_import_wh=198 + 200, supplier_export_wh=101,           # 398 (bought 1001, took 900: 101 back)
        shortfall_wh=0,
        supplier_import_units=198 * 28_000 + 200 * 35_000,              # 12 544 000
        supplier_export_units=101 * 7_000,                              # 707 000
        shortfall_tariff_units=0, imbalance_units=0,
        grid_only_import_units=1_200 * 28_000 + 900 * 30_000 + 500 * 32_000 + 700 * 35_000,  # 101 100 000
        grid_only_export_units=0,
        p2p_paid_units=57_057_000, p2p_received_units=0, intervals=4, estimated_intervals=0),
    "bat": dict(
        import_wh=80 + 400, export_wh=146 + 300,                        # 480, 446
        bought_wh=100 + 100, sold_wh=200 + 200,                         # 200, 400
        from_peers_wh=80 + 100, to_peers_wh=146 + 200,                  # 180, 346
        supplier_import_wh=54 + 300, supplier_export_wh=100 + 20,       # 354, 120
        shortfall_wh=54,
        supplier_import_units=54 * 30_000 + 300 * 34_000,               # 11 820 000
        supplier_export_units=100 * 7_000 + 20 * 6_000,                 # 820 000
        shortfall_tariff_units=0, imbalance_units=0,
        grid_only_import_units=80 * 34_000 + 400 * 34_000,              # 16 320 000
        grid_only_export_units=146 * 7_000 + 300 * 7_000,               # 3 122 000
        p2p_paid_units=13_200_000, p2p_received_units=14_800_000, intervals=4, estimated_intervals=0),
}
# With the imbalance price the shortfall is charged by the community at 40 000 ticks and
# the community pays the supplier for it at the member's tariff; the member's own supplier
# import is the rest.
EXPECTED_FLOWS_IMBALANCE = {
    "pv": EXPECTED_FLOWS["pv"] | dict(
        shortfall_tariff_units=101 * 30_000 + 600 * 34_000 + 200 * 34_000,       # 30 230 000
        supplier_import_units=35_330_000 - 30_230_000,                          # 5 100 000 (its 150 Wh)
        imbalance_units=901 * 40_000),                                          # 36 040 000
    "home": EXPECTED_FLOWS["home"],
    "bat": EXPECTED_FLOWS["bat"] | dict(
        shortfall_tariff_units=54 * 30_000,                                     # 1 620 000
        supplier_import_units=11_820_000 - 1_620_000,                           # 10 200 000
        imbalance_units=54 * 40_000),                                           # 2 160 000
}


@pytest.mark.parametrize("imbalance", [None, IMBALANCE_TICKS])
def test_fixture_flows_by_hand(imbalance):
    flows, grid_pos = settle_fixture(imbalance)
    expected = EXPECTED_FLOWS if imbalance is None else EXPECTED_FLOWS_IMBALANCE
    for m in MEMBERS:
        assert flows[m].as_dict() == expected[m], m
    nets = {m: [i - e for i, e in zip(s.imp, s.exp, strict=True)] for m, s in fixture_series().items()}
    check_balance(flows, grid_pos, nets)
    # the community's net grid exchange: (54) + (-100) + (730) + (700) = 1384 Wh, which is
    # the sum of the residuals: pv 1051 - 198, home 398 - 101, bat 354 - 120
    assert sum(map(sum, nets.values())) == 1_384 == (1_051 - 198) + (398 - 101) + (354 - 120)
    # P2P money: paid 57 057 000 + 13 200 000 = received 55 457 000 + 14 800 000
    assert sum(f.p2p_paid_units for f in flows.values()) == 70_257_000
    assert sum(f.p2p_received_units for f in flows.values()) == 70_257_000


def test_fixture_ledger_with_imbalance_price():
    flows, _ = settle_fixture(IMBALANCE_TICKS)
    net: dict[str, int] = {}
    for m in MEMBERS:
        for t in ledger(m, flows[m]):
            net[t.payer] = net.get(t.payer, 0) - t.amount_units
            net[t.payee] = net.get(t.payee, 0) + t.amount_units
    assert net == {
        "peers": 0,
        # supplier: pv 5 100 000 + bat 10 200 000 + home 12 544 000 (imports), + 30 230 000 + 1 620 000
        # (the shortfalls, from the community), - 1 386 000 - 707 000 - 820 000 (exports)
        SUPPLIER: 5_100_000 + 10_200_000 + 12_544_000 + 30_230_000 + 1_620_000 - 1_386_000 - 707_000 - 820_000,
        # community: 36 040 000 + 2 160 000 imbalance charges - 30 230 000 - 1 620 000 paid to the supplier
        COMMUNITY: 36_040_000 + 2_160_000 - 30_230_000 - 1_620_000,
        "pv": 55_457_000 - 5_100_000 + 1_386_000 - 36_040_000,
        "home": -57_057_000 - 12_544_000 + 707_000,
        "bat": -13_200_000 + 14_800_000 - 10_200_000 + 820_000 - 2_160_000,
    }
    assert sum(net.values()) == 0


# June 2025 in Amsterdam: 30 days of CEST = 720 h; the period is 1 h -> 1/720 month.
#   fixed_fee            300 000 000 / 720        = 416 666.67 -> 416 667
#   contracted_power pv  150 000 000 x 7 / 720    = 1 458 333.33 -> 1 458 333
#                   home 150 000 000 x 5.5 / 720  = 1 145 833.33 -> 1 145 833
#                   bat  150 000 000 x 11 / 720   = 2 291 666.67 -> 2 291 667
# grid_export_fee (501 ticks, 25 % less on energy delivered to peers), half-even ties:
#   pv  501 x 2100 - 501 x 1902 / 4 = 1 052 100 - 238 225.5 = 813 874.5 -> 813 874 (even)
#   bat 501 x 446  - 501 x 346 / 4  =   223 446 -  43 336.5 = 180 109.5 -> 180 110 (even)
# Lines: (name, payee, amount in units, energy in Wh); > 0 the member pays, < 0 it is paid.
EXPECTED_LINES = {
    "pv": [
        ("p2p_bought", "peers", 0, 0),
        ("p2p_sold", "peers", -55_457_000, 2_803),
        ("supplier_import", "supplier", 35_330_000, 1_051),
        ("supplier_export", "supplier", -1_386_000, 198),
        ("grid_import_fee", "supplier", 8_000 * 150, 150),                 # 1 200 000 (nothing from peers)
        ("grid_export_fee", "supplier", 813_874, 2_100),
        ("taxes_surcharges", "supplier", 2_000 * 150, 150),                # 300 000
        ("supply_levy", "supplier", 1_500 * 1_051, 1_051),                 # 1 576 500
        ("marketplace_fee", "community", 500 * (0 + 2_803), 2_803),        # 1 401 500
        ("buyer_fee", "community", 0, 0),
        ("seller_fee", "community", 120 * 2_803, 2_803),                   # 336 360
        ("service_fee", "community", 200 * 150, 150),                      # 30 000
        ("fixed_fee", "community", 416_667, None),
        ("contracted_power_fee", "supplier", 1_458_333, None),
    ],
    "home": [
        ("p2p_bought", "peers", 57_057_000, 3_003),
        ("p2p_sold", "peers", 0, 0),
        ("supplier_import", "supplier", 12_544_000, 398),
        ("supplier_export", "supplier", -707_000, 101),
        ("grid_import_fee", "supplier", 8_000 * 3_300 - 8_000 * 2_902 // 2, 3_300),  # 26 400 000 - 11 608 000
        ("grid_export_fee", "supplier", 0, 0),
        ("taxes_surcharges", "supplier", 2_000 * 3_300, 3_300),            # 6 600 000
        ("supply_levy", "supplier", 1_500 * 398, 398),                     # 597 000
        ("marketplace_fee", "community", 500 * 3_003, 3_003),              # 1 501 500
        ("buyer_fee", "community", 150 * 3_003, 3_003),                    # 450 450
        ("seller_fee", "community", 0, 0),
        ("service_fee", "community", 200 * 3_300, 3_300),                  # 660 000
        ("fixed_fee", "community", 416_667, None),
        ("contracted_power_fee", "supplier", 1_145_833, None),
    ],
    "bat": [
        ("p2p_bought", "peers", 13_200_000, 200),
        ("p2p_sold", "peers", -14_800_000, 400),
        ("supplier_import", "supplier", 11_820_000, 354),
        ("supplier_export", "supplier", -820_000, 120),
        ("grid_import_fee", "supplier", 8_000 * 480 - 8_000 * 180 // 2, 480),  # 3 840 000 - 720 000
        ("grid_export_fee", "supplier", 180_110, 446),
        ("taxes_surcharges", "supplier", 2_000 * 480, 480),                # 960 000
        ("supply_levy", "supplier", 1_500 * 354, 354),                     # 531 000
        ("marketplace_fee", "community", 500 * (200 + 400), 600),          # 300 000
        ("buyer_fee", "community", 150 * 200, 200),                        # 30 000
        ("seller_fee", "community", 120 * 400, 400),                       # 48 000
        ("service_fee", "community", 200 * 480, 480),                      # 96 000
        ("fixed_fee", "community", 416_667, None),
        ("contracted_power_fee", "supplier", 2_291_667, None),
        ("flex_payout", "community", -250_000, None),
    ],
}
# (total, owed to the community, grid-only counterfactual, savings = grid-only - total)
# grid-only: N+ at the tariff - N- at the feed-in + every supplier per-kWh fee on the metered
# energy without any reduction (supply_levy on all imports) + the supplier periodic fees:
#   pv    5 100 000 - 14 300 000 + 8000 x 150 + 501 x 2100 + 2000 x 150 + 1500 x 150 + 1 458 333
#   home  101 100 000 + 8000 x 3300 + 2000 x 3300 + 1500 x 3300 + 1 145 833
#   bat   16 320 000 - 3 122 000 + 8000 x 480 + 501 x 446 + 2000 x 480 + 1500 x 480 + 2 291 667
GRID_ONLY = {
    "pv": 5_100_000 - 14_300_000 + 1_200_000 + 1_052_100 + 300_000 + 225_000 + 1_458_333,     # -4 964 567
    "home": 101_100_000 + 26_400_000 + 6_600_000 + 4_950_000 + 1_145_833,                     # 140 195 833
    "bat": 16_320_000 - 3_122_000 + 3_840_000 + 223_446 + 960_000 + 720_000 + 2_291_667,      # 21 233 113
}
EXPECTED_TOTALS = {
    # pv: -55 457 000 + 35 330 000 - 1 386 000 + 1 200 000 + 813 874 + 300 000 + 1 576 500
    #     + 1 401 500 + 336 360 + 30 000 + 416 667 + 1 458 333
    "pv": (-13_979_766, 1_401_500 + 336_360 + 30_000 + 416_667, GRID_ONLY["pv"], -4_964_567 + 13_979_766),
    # home: 57 057 000 + 12 544 000 - 707 000 + 14 792 000 + 6 600 000 + 597 000 + 1 501 500
    #       + 450 450 + 660 000 + 416 667 + 1 145 833
    "home": (95_057_450, 1_501_500 + 450_450 + 660_000 + 416_667, GRID_ONLY["home"], 140_195_833 - 95_057_450),
    # bat: 13 200 000 - 14 800 000 + 11 820 000 - 820 000 + 3 120 000 + 180 110 + 960 000 + 531 000
    #      + 300 000 + 30 000 + 48 000 + 96 000 + 416 667 + 2 291 667 - 250 000
    "bat": (17_123_444, 300_000 + 30_000 + 48_000 + 96_000 + 416_667 - 250_000, GRID_ONLY["bat"],
            21_233_113 - 17_123_444),
}


def fixture_bills(fees: FeeSchedule) -> dict:
    flows, _ = settle_fixture(fees.imbalance_ticks)
    return {m: bill(m, T0, T0 + 4 * Q, flows[m], fees, TZ, CONTRACTED_W[m], FLEX if m == "bat" else ())
            for m in MEMBERS}


def test_fixture_month_fraction_and_rounding():
    assert month_fraction(T0, T0 + 4 * Q, TZ) == Fraction(1, 720)
    assert round_units(Fraction(300_000_000, 720)) == 416_667
    assert round_units(Fraction(1_627_749, 2)) == 813_874    # 813 874.5, ties to even: down
    assert round_units(Fraction(360_219, 2)) == 180_110      # 180 109.5, ties to even: up
    assert round_units(Fraction(-5, 2)) == -2


def test_fixture_bills_by_hand():
    bills = fixture_bills(FEES)
    for m in MEMBERS:
        b = bills[m]
        assert [(x.name, x.payee, x.amount_units, x.energy_wh) for x in b.lines] == EXPECTED_LINES[m], m
        assert (b.total_units, b.community_units, b.grid_only_units, b.savings_units) == EXPECTED_TOTALS[m], m
        assert b.total_units == sum(amount for _, _, amount, _ in EXPECTED_LINES[m])
        rates = {x.name: x.rate_ticks for x in b.lines}
        assert rates["grid_import_fee"] == 8_000 and rates["grid_export_fee"] == 501
    assert bills["home"].lines[4].detail == "2902 Wh traded in the community at 50.00 % less"
    assert bills["pv"].lines[-1].detail == "0.0014 month(s) x 7.000 kW"


def test_fixture_bills_with_imbalance_price():
    bills = fixture_bills(FEES_IMBALANCE)
    # pv: its supplier import is now its own 150 Wh (1051 - 901), the 901 Wh shortfall is
    # charged by the community at 40 000 ticks; bat likewise (354 - 54 = 300 Wh, 54 Wh)
    changed = {
        "pv": [("supplier_import", "supplier", 5_100_000, 150), ("imbalance", "community", 36_040_000, 901)],
        "home": [("supplier_import", "supplier", 12_544_000, 398), ("imbalance", "community", 0, 0)],
        "bat": [("supplier_import", "supplier", 10_200_000, 300), ("imbalance", "community", 2_160_000, 54)],
    }
    expected_totals = {
        # pv: -13 979 766 - 35 330 000 + 5 100 000 + 36 040 000
        "pv": (-8_169_766, 2_184_527 + 36_040_000, -4_964_567, -4_964_567 + 8_169_766),
        "home": EXPECTED_TOTALS["home"],
        # bat: 17 123 444 - 11 820 000 + 10 200 000 + 2 160 000
        "bat": (17_663_444, 640_667 + 2_160_000, 21_233_113, 21_233_113 - 17_663_444),
    }
    for m in MEMBERS:
        b = bills[m]
        lines = [(x.name, x.payee, x.amount_units, x.energy_wh) for x in b.lines]
        expected = EXPECTED_LINES[m][:2] + changed[m][:1] + EXPECTED_LINES[m][3:4] + changed[m][1:] \
            + EXPECTED_LINES[m][4:]
        assert lines == expected, m
        assert (b.total_units, b.community_units, b.grid_only_units, b.savings_units) == expected_totals[m], m
        assert b.total_units == sum(x.amount_units for x in b.lines)
    assert [x.rate_ticks for x in bills["pv"].lines if x.name == "imbalance"] == [40_000]


def test_bill_imbalance_at_price_zero_does_not_count_the_shortfall_twice():
    """Regression: with an imbalance price of 0 and a tariff of 0 in the interval, the
    shortfall's money is 0 on both lines; its energy must still be shown once."""
    g = Grid(T0, Q, 1)
    s = MemberSeries.empty("a", g)
    s.add(PointKind.IMPORT, [10])
    f = settle_member(s, [-5], [0], [0], 0)
    b = bill("a", T0, T0 + Q, f, FeeSchedule(imbalance_ticks=0), TZ)
    assert [(x.name, x.amount_units, x.energy_wh) for x in b.lines] == [
        ("p2p_bought", 0, 0), ("p2p_sold", 0, 5), ("supplier_import", 0, 10), ("supplier_export", 0, 0),
        ("imbalance", 0, 5)]


def test_step_series():
    assert step_series([(T0 + Q, 7)], GRID, default=3) == [3, 7, 7, 7]
    with pytest.raises(ValueError, match="no value in force"):
        step_series([(T0 + Q, 7)], GRID)


# =========================================================================== KPIs by hand
#
# consumption per interval = max(import, import + generation + discharge - export - charge):
#   pv    1500-1000 = 500, 1400-700 = 700, 150+300 = 450, 900-400 = 500     -> 2150
#   home  1200, 900, 500, 700 (import only)                                  -> 3300
#   bat   400-146-200 = 54, 400+100-300 = 200, 80+250 = 330, 400             -> 984


def test_member_kpis_by_hand():
    series = fixture_series()
    pv = member_kpi(series["pv"], INTENSITY)
    assert (pv.consumption_wh, pv.grid_import_wh, pv.generation_wh, pv.grid_export_wh) == (2_150, 150, 4_100, 2_100)
    # SS = (2150 - 150) / 2150 = 0.930 232 56 -> 930 233 ppm
    assert pv.self_sufficiency_ppm == 930_233
    # self-consumed = generation - export per interval: 500 + 700 + 300 + 500 = 2000; 2000 / 4100
    # = 0.487 804 88 -> 487 805 ppm
    assert (pv.self_consumed_wh, pv.self_consumption_ppm) == (2_000, 487_805)
    # CO2 avoided = (consumption - import) x intensity: (500x300 + 700x320 + 300x350 + 500x380) / 1000
    #             = 669 000 / 1000 = 669 g
    assert pv.co2_avoided_g == 669
    assert (pv.peak_import_wh, pv.peak_import_w) == (150, 600)   # 150 Wh in 15 min = 600 W

    home = member_kpi(series["home"], INTENSITY, p2p_bought_wh=3_003)
    assert (home.consumption_wh, home.grid_import_wh, home.self_sufficiency_ppm) == (3_300, 3_300, 0)
    assert (home.self_consumption_ppm, home.co2_avoided_g) == (None, 0)
    assert home.p2p_share_ppm == 910_000   # 3003 / 3300 = 0.91
    assert home.peak_import_w == 4_800     # 1200 Wh x 4

    bat = member_kpi(series["bat"], INTENSITY, p2p_bought_wh=200)
    assert (bat.consumption_wh, bat.grid_import_wh) == (984, 480)
    assert bat.self_sufficiency_ppm == 512_195    # 504 / 984 = 0.512 195 12
    assert bat.self_consumed_wh == (400 - 146) + (400 - 300)   # 354
    assert bat.self_consumption_ppm == 442_500    # 354 / 800
    # (54x300 + 200x320 + 250x350 + 0x380) / 1000 = 167 700 / 1000 = 167.7 -> 168 g
    assert bat.co2_avoided_g == 168
    assert bat.p2p_share_ppm == 203_252           # 200 / 984 = 0.203 252 03


def test_community_kpis_by_hand():
    c = community_kpi(fixture_series().values(), INTENSITY, p2p_bought_wh=3_203)
    # consumption per interval: 500+1200+54 = 1754, 700+900+200 = 1800, 450+500+330 = 1280,
    # 500+700+400 = 1600 -> 6434; the community's boundary (sum of import - export):
    # 54, -100, 730, 700 -> grid import 54 + 730 + 700 = 1484, grid export 100
    assert (c.consumption_wh, c.grid_import_wh, c.grid_export_wh) == (6_434, 1_484, 100)
    # SS = (6434 - 1484) / 6434 = 4950 / 6434 = 0.769 350 33 -> 769 350 ppm (a member-by-member
    # sum of imports, 150 + 3300 + 480 = 3930, would give only 0.389 2)
    assert c.self_sufficiency_ppm == 769_350
    # generation 1900, 1800, 300, 900 = 4900; self-consumed 1900 + (1800-100) + 300 + 900 = 4800
    assert (c.generation_wh, c.self_consumed_wh, c.self_consumption_ppm) == (4_900, 4_800, 979_592)
    # CO2: (1700x300 + 1800x320 + 550x350 + 900x380) / 1000 = 1 620 500 / 1000 = 1620.5 -> 1620 (half-even)
    assert c.co2_avoided_g == 1_620
    assert (c.peak_import_wh, c.peak_import_w) == (730, 2_920)
    assert c.p2p_share_ppm == 497_824             # 3203 / 6434 = 0.497 824 06
    assert c.intervals == 4 and c.interval_minutes == 15
    assert ratio_ppm(1, 0) is None and ratio_ppm(1, 3) == 333_333 and ratio_ppm(1, 8) == 125_000


# =========================================================================== check_balance rejects


def test_check_balance_detects_each_imbalance():
    flows, grid_pos = settle_fixture(None)
    nets = {m: [i - e for i, e in zip(s.imp, s.exp, strict=True)] for m, s in fixture_series().items()}
    bad = dict(flows, pv=Flows(**(flows["pv"].as_dict() | {"supplier_export_wh": 197})))
    with pytest.raises(Imbalanced, match="N != P"):
        check_balance(bad, grid_pos, nets)
    bad = dict(flows, bat=Flows(**(flows["bat"].as_dict() | {"shortfall_wh": 355, "supplier_import_wh": 354})))
    with pytest.raises(Imbalanced, match="exceeds"):
        check_balance(bad, grid_pos, nets)
    with pytest.raises(Imbalanced, match="interval 2"):
        check_balance(flows, dict(grid_pos, bat=[-200, -200, 101, 100]), nets)
    bad = dict(flows, home=Flows(**(flows["home"].as_dict() | {"p2p_paid_units": 57_057_001})))
    with pytest.raises(Imbalanced, match="P2P money"):
        check_balance(bad, grid_pos, nets)
    with pytest.raises(Imbalanced, match="net grid exchange"):
        check_balance(flows, grid_pos, dict(nets, home=[1_200, 900, 500, 701]))


# =========================================================================== properties

wh = st.integers(0, 4_000)


@st.composite
def fee_schedules(draw) -> FeeSchedule:
    per_kwh = tuple(PerKwhFee(f"k{i}", draw(st.integers(0, 20_000)), draw(st.sampled_from(list(Basis))),
                              draw(st.sampled_from(list(Payee))), draw(st.integers(0, 10_000)))
                    for i in range(draw(st.integers(0, 6))))
    periodic = tuple(PeriodicFee(f"p{i}", draw(st.integers(0, 10**9)), draw(st.sampled_from(list(Payee))),
                                 draw(st.booleans()))
                     for i in range(draw(st.integers(0, 3))))
    return FeeSchedule(per_kwh, periodic, draw(st.none() | st.integers(0, 100_000)))


@st.composite
def scenarios(draw) -> dict:
    """Members with random meters on a random grid, trades on products inside the grid (so
    positions sum to 0 per interval and the trade money is consistent), random tariffs."""
    n = draw(st.integers(1, 8))
    grid = Grid(T0, Q, n)
    names = [f"m{k}" for k in range(draw(st.integers(1, 4)))]
    vals = st.lists(wh, min_size=n, max_size=n)
    series = {}
    for name in names:
        s = MemberSeries.empty(name, grid)
        for kind in PointKind:
            if draw(st.booleans()):
                s.add(kind, draw(vals))
        s.estimated = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        series[name] = s
    products: dict[str, list[tuple[int, int, int]]] = {m: [] for m in names}
    paid = {m: 0 for m in names}
    received = {m: 0 for m in names}
    if len(names) > 1:
        for _ in range(draw(st.integers(0, 8))):
            first = draw(st.integers(0, n - 1))
            k = draw(st.integers(1, n - first))
            buyer, seller = draw(st.permutations(names))[:2]
            energy, price = draw(st.integers(1, 6_000)), draw(st.integers(0, 50_000))
            products[buyer].append((T0 + first * Q, T0 + (first + k) * Q, energy))
            products[seller].append((T0 + first * Q, T0 + (first + k) * Q, -energy))
            paid[buyer] += energy * price
            received[seller] += energy * price
    prices = st.lists(st.integers(-10_000, 60_000), min_size=n, max_size=n)  # dynamic: may be < 0
    return {"grid": grid, "series": series, "products": products, "paid": paid, "received": received,
            "tariffs": {m: (draw(prices), draw(prices)) for m in names}, "fees": draw(fee_schedules()),
            "contracted": {m: draw(st.integers(0, 60_000)) for m in names}}


def settle_all(sc: dict, imbalance: int | None) -> tuple[dict[str, Flows], dict[str, list[int]]]:
    flows, pos = {}, {}
    for m, s in sc["series"].items():
        pos[m] = positions_on_grid(sc["products"][m], sc["grid"])
        imp, feed = sc["tariffs"][m]
        flows[m] = settle_member(s, pos[m], imp, feed, imbalance, sc["paid"][m], sc["received"][m])
    return flows, pos


def reference(s: MemberSeries, pos: list[int], imp: list[int], feed: list[int], imbalance: int | None) -> dict:
    """The allocation rule of settle.py's docstring, interval by interval, written plainly."""
    out = dict.fromkeys(Flows().as_dict(), 0)
    for i in range(s.grid.n):
        n = s.imp[i] - s.exp[i]
        p = pos[i]
        r = n - p
        bought, sold = max(p, 0), max(-p, 0)
        net_imp, net_exp = max(n, 0), max(-n, 0)
        to_peers = min(sold, net_exp)
        shortfall = sold - to_peers
        out["import_wh"] += net_imp
        out["export_wh"] += net_exp
        out["bought_wh"] += bought
        out["sold_wh"] += sold
        out["from_peers_wh"] += min(bought, net_imp)
        out["to_peers_wh"] += to_peers
        out["supplier_import_wh"] += max(r, 0)
        out["supplier_export_wh"] += max(-r, 0)
        out["shortfall_wh"] += shortfall
        out["supplier_export_units"] += max(-r, 0) * feed[i]
        out["grid_only_import_units"] += net_imp * imp[i]
        out["grid_only_export_units"] += net_exp * feed[i]
        if imbalance is None:
            out["supplier_import_units"] += max(r, 0) * imp[i]
        else:
            out["supplier_import_units"] += (max(r, 0) - shortfall) * imp[i]
            out["shortfall_tariff_units"] += shortfall * imp[i]
            out["imbalance_units"] += shortfall * imbalance
    out["intervals"] = s.grid.n
    out["estimated_intervals"] = sum(1 for e in s.estimated if e)
    return out


@given(scenarios(), st.none() | st.integers(0, 100_000))
@settings(max_examples=300, deadline=None, database=None)
def test_property_energy_and_money_balance(sc, imbalance):
    flows, pos = settle_all(sc, imbalance)
    nets = {m: [i - e for i, e in zip(s.imp, s.exp, strict=True)] for m, s in sc["series"].items()}
    assert all(sum(p[i] for p in pos.values()) == 0 for i in range(sc["grid"].n))
    check_balance(flows, pos, nets)   # never raises
    for m, f in flows.items():
        assert f.import_wh - f.export_wh == (f.bought_wh - f.sold_wh) + (f.supplier_import_wh - f.supplier_export_wh)
        assert f.shortfall_wh <= f.supplier_import_wh
        assert f.from_peers_wh <= min(f.bought_wh, f.import_wh) and f.to_peers_wh <= min(f.sold_wh, f.export_wh)
        s = sc["series"][m]
        imp, feed = sc["tariffs"][m]
        assert f.as_dict() | {"p2p_paid_units": 0, "p2p_received_units": 0} == reference(s, pos[m], imp, feed,
                                                                                           imbalance)
        # the supplier is paid for every residual import either way (by the member, or for the
        # shortfall by the community)
        assert f.supplier_import_units + f.shortfall_tariff_units == sum(
            max(n - p, 0) * t for n, p, t in zip(nets[m], pos[m], imp, strict=True))
    assert sum(f.p2p_paid_units for f in flows.values()) == sum(f.p2p_received_units for f in flows.values())
    # the community's net exchange with the grid is the sum of the residuals
    assert sum(map(sum, nets.values())) == sum(f.supplier_import_wh - f.supplier_export_wh for f in flows.values())


@given(scenarios())
@settings(max_examples=200, deadline=None, database=None)
def test_property_bill_is_the_sum_of_its_lines_and_deterministic(sc):
    fees = sc["fees"]
    flows, _ = settle_all(sc, fees.imbalance_ticks)
    again, _ = settle_all(sc, fees.imbalance_ticks)
    assert flows == again
    g = sc["grid"]
    for m, f in flows.items():
        extra = (Line("flex", "community", -12_345),) if m == "m0" else ()
        b = bill(m, g.start_us, g.end_us, f, fees, TZ, sc["contracted"][m], extra)
        assert b == bill(m, g.start_us, g.end_us, again[m], fees, TZ, sc["contracted"][m], extra)
        assert b.total_units == sum(x.amount_units for x in b.lines)
        assert b.community_units == sum(x.amount_units for x in b.lines if x.payee == "community")
        assert b.savings_units == b.grid_only_units - b.total_units
        assert all(type(x.amount_units) is int for x in b.lines)
        # energy on the statement: the supplier import line and the imbalance line share R+
        shown = {x.name: x.energy_wh for x in b.lines}
        assert shown["supplier_import"] + shown.get("imbalance", 0) == f.supplier_import_wh
        assert len(b.lines) == 4 + (fees.imbalance_ticks is not None) + len(fees.per_kwh) + len(fees.periodic) \
            + len(extra)
        # a per-kWh fee is never more than the full rate nor less than the reduced rate
        for fee, line in zip(fees.per_kwh, b.lines[-len(fees.periodic) - len(extra) - len(fees.per_kwh):],
                             strict=False):
            assert line.name == fee.name
            low = fee.ticks * line.energy_wh * (10_000 - fee.community_reduction_bp)
            assert low - 5_000 <= line.amount_units * 10_000 <= fee.ticks * line.energy_wh * 10_000


@given(scenarios(), st.none() | st.integers(0, 100_000))
@settings(max_examples=200, deadline=None, database=None)
def test_property_ledger_nets_out(sc, imbalance):
    flows, _ = settle_all(sc, imbalance)
    net: dict[str, int] = {}
    for m, f in flows.items():
        for t in ledger(m, f):
            assert t.amount_units != 0 and t.payer != t.payee   # < 0 possible at negative prices
            net[t.payer] = net.get(t.payer, 0) - t.amount_units
            net[t.payee] = net.get(t.payee, 0) + t.amount_units
    assert net.get("peers", 0) == 0
    assert sum(net.values()) == 0
    for m, f in flows.items():
        assert net.get(m, 0) == (f.p2p_received_units + f.supplier_export_units - f.p2p_paid_units
                                 - f.supplier_import_units - f.imbalance_units)
    assert net.get(COMMUNITY, 0) == sum(f.imbalance_units - f.shortfall_tariff_units for f in flows.values())
    assert net.get(SUPPLIER, 0) == sum(f.supplier_import_units + f.shortfall_tariff_units - f.supplier_export_units
                                       for f in flows.values())


def one_interval(s: MemberSeries, i: int) -> MemberSeries:
    g = Grid(s.grid.start_us + i * s.grid.step_us, s.grid.step_us, 1)
    return MemberSeries(s.member, g, [s.imp[i]], [s.exp[i]], [s.gen[i]], [s.chg[i]], [s.dis[i]],
                        [s.estimated[i]] if s.estimated else [])


@given(scenarios(), st.none() | st.integers(0, 100_000), st.data())
@settings(max_examples=200, deadline=None, database=None)
def test_property_a_correction_changes_only_its_interval(sc, imbalance, data):
    """Settle the period before and after correcting one interval's meter values: each
    field changes by exactly what that interval alone changes by; and the period is the
    sum of its intervals (no cross-interval netting)."""
    g = sc["grid"]
    m = data.draw(st.sampled_from(sorted(sc["series"])))
    i = data.draw(st.integers(0, g.n - 1))
    s = sc["series"][m]
    pos = positions_on_grid(sc["products"][m], g)
    imp, feed = sc["tariffs"][m]
    fixed = MemberSeries(m, g, list(s.imp), list(s.exp), list(s.gen), list(s.chg), list(s.dis), list(s.estimated))
    fixed.imp[i], fixed.exp[i] = data.draw(wh), data.draw(wh)
    fixed.estimated[i] = data.draw(st.integers(0, 1))

    def whole(x: MemberSeries) -> dict[str, int]:
        return settle_member(x, pos, imp, feed, imbalance).as_dict()

    def alone(x: MemberSeries) -> dict[str, int]:
        return settle_member(one_interval(x, i), pos[i:i + 1], imp[i:i + 1], feed[i:i + 1], imbalance).as_dict()

    before, after = whole(s), whole(fixed)
    a_before, a_after = alone(s), alone(fixed)
    assert {k: after[k] - before[k] for k in before} == {k: a_after[k] - a_before[k] for k in before}
    parts = [settle_member(one_interval(s, j), pos[j:j + 1], imp[j:j + 1], feed[j:j + 1], imbalance)
             for j in range(g.n)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert total.as_dict() == before


@given(st.integers(-10**7, 10**7), st.integers(1, 200))
@settings(max_examples=300, deadline=None, database=None)
def test_property_spread_flat(energy, k):
    parts = spread_flat(energy, k)
    assert len(parts) == k and sum(parts) == energy
    assert max(parts) - min(parts) <= 1
    assert all(p * energy >= 0 for p in parts)                    # sign kept
    assert [abs(p) for p in parts] == sorted((abs(p) for p in parts), reverse=True)  # remainder first
    with pytest.raises(ValueError):
        spread_flat(energy, 0)


@given(st.lists(st.one_of(st.none(), st.integers(0, 5_000)), max_size=40), st.integers(1, 8), st.integers(1, 12))
@settings(max_examples=400, deadline=None, database=None)
def test_property_estimate(values, imax, lookback):
    out, est = estimate(values, interpolate_max=imax, lookback=lookback)
    n = len(values)
    assert len(out) == n and est == [v is None for v in values]
    assert all(out[i] == v for i, v in enumerate(values) if v is not None)
    i = 0
    while i < n:
        if values[i] is not None:
            i += 1
            continue
        j = i
        while j < n and values[j] is None:
            j += 1
        gap = j - i
        if i > 0 and j < n and gap <= imax:
            left, right = values[i - 1], values[j]
            # exact linear values left + (right - left) s / (gap + 1), s = 1..gap; their sum is
            # gap x left + (right - left) x gap / 2
            exact = [left + Fraction((right - left) * s, gap + 1) for s in range(1, gap + 1)]
            assert sum(out[i:j]) == math.floor(gap * left + Fraction((right - left) * gap, 2))
            assert all(abs(o - x) < 1 for o, x in zip(out[i:j], exact, strict=True))
            assert all(min(left, right) <= o <= max(left, right) for o in out[i:j])
        else:
            for t in range(i, j):
                assert out[t] == (out[t - lookback] if t >= lookback else 0)
        i = j


def test_estimate_examples():
    # 100 .. 200 with 2 missing: exact 133.33, 166.67 -> total 300 exactly; floors 133, 166 + 1 to the first
    assert estimate([100, None, None, 200]) == ([100, 134, 166, 200], [False, True, True, False])
    # a gap at the start (no left reading) and no week of history: 0
    assert estimate([None, 5]) == ([0, 5], [True, False])
    # a gap longer than interpolate_max takes the value lookback intervals earlier
    assert estimate([1, 2, 3, None, None, None, 9], interpolate_max=2, lookback=3) == (
        [1, 2, 3, 1, 2, 3, 9], [False, False, False, True, True, True, False])


products_st = st.lists(st.tuples(st.integers(-6, 12), st.integers(1, 6), st.integers(-20_000, 20_000)), max_size=10)


@given(st.integers(1, 10), products_st)
@settings(max_examples=300, deadline=None, database=None)
def test_property_positions_on_grid(n, raw):
    grid = Grid(T0, Q, n)
    inside = [(f, k, e) for f, k, e in raw if f >= 0 and f + k <= n]
    outside = [(f, k, e) for f, k, e in raw if f + k <= 0 or f >= n]
    products = [(T0 + f * Q, T0 + (f + k) * Q, e) for f, k, e in inside + outside]
    pos = positions_on_grid(products, grid)
    assert len(pos) == n
    assert sum(pos) == sum(e for _, _, e in inside)
    # a product straddling the grid counts its spread parts inside the grid only
    allp = [(T0 + f * Q, T0 + (f + k) * Q, e) for f, k, e in raw]
    expected = [0] * n
    for f, k, e in raw:
        for j, part in enumerate(spread_flat(e, k)):
            if 0 <= f + j < n:
                expected[f + j] += part
    assert positions_on_grid(allp, grid) == expected
    with pytest.raises(ValueError):
        positions_on_grid([(T0 + 1, T0 + Q + 1, 5)], grid)
    with pytest.raises(ValueError):
        positions_on_grid([(T0, T0 + Q + 60, 5)], grid)


ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Amsterdam", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")]


def month_start(y: int, m: int, tz: ZoneInfo) -> int:
    y, m = y + (m - 1) // 12, (m - 1) % 12 + 1
    return to_us(datetime(y, m, 1, tzinfo=tz))


@given(st.integers(1990, 2060), st.integers(1, 12), st.sampled_from(ZONES), st.integers(1, 14),
       st.integers(0, 2**62), st.integers(0, 2**62))
@settings(max_examples=300, deadline=None, database=None)
def test_property_month_fraction(y, m, tz, months, r1, r2):
    start, end = month_start(y, m, tz), month_start(y, m + 1, tz)
    assert month_fraction(start, end, tz) == 1
    far = month_start(y, m + months, tz)
    assert month_fraction(start, far, tz) == months
    # additive when split anywhere (also off any boundary)
    a = start + r1 % (far - start)
    t = a + r2 % (far - a + 1)
    assert month_fraction(start, t, tz) + month_fraction(t, far, tz) == months
    assert month_fraction(a, t, tz) + month_fraction(t, far, tz) == month_fraction(a, far, tz)
    assert 0 <= month_fraction(a, t, tz) <= months
    assert month_fraction(t, a, tz) == 0


def test_month_fraction_dst_month_is_local():
    # March 2025 in Amsterdam is 743 hours long (clocks forward on the 30th): one local day
    # is 24/743 of it, not 1/31
    tz = ZoneInfo("Europe/Amsterdam")
    d1 = to_us(datetime(2025, 3, 10, tzinfo=tz))
    assert month_fraction(d1, d1 + 24 * HOUR, tz) == Fraction(24, 743)
    # the hour before local midnight of 1 June belongs to May (31 x 24 = 744 h)
    june = to_us(datetime(2025, 6, 1, tzinfo=tz))
    assert month_fraction(june - HOUR, june + HOUR, tz) == Fraction(1, 744) + Fraction(1, 720)
    assert month_fraction(june, june + 30 * 24 * HOUR, tz) == 1
    assert (datetime(2025, 7, 1, tzinfo=tz) - datetime(2025, 6, 1, tzinfo=tz)) == timedelta(days=30)
