"""What members owe the community on their bills settles on chain through settlement (the
metering store is a PayoutSource): one transaction per bill run, exactly once, a
correction paying only its change, reconciled against the bills. Real PostgreSQL, the real
runtime and the in-process EVM with contracts compiled from source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from support.market import open_test_market
from support.settlement import DEPOSIT, MEMBER_KEYS, funded_worker, make_worker, reconnect

from exchange.core.units import from_us, iso, to_us
from exchange.flexibility.store import FlexStore
from exchange.metering.core.model import Basis, FeeSchedule, MeterPoint, Payee, PeriodicFee, PerKwhFee, PointKind
from exchange.metering.fees import schedule_json
from exchange.metering.service import METERING_EVENT_BASE, MeteringService
from exchange.metering.store import MeteringStore
from exchange.protocol.errors import VoltbourseError

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 1, tzinfo=UTC)
START, END = to_us(DAY), to_us(DAY + timedelta(hours=1))
FEES = FeeSchedule(per_kwh=(PerKwhFee("service_fee", 2_000, Basis.IMPORT, Payee.COMMUNITY),
                            PerKwhFee("grid_import_fee", 8_000, Basis.IMPORT)),
                   periodic=(PeriodicFee("fixed_fee", 720_000_000, Payee.COMMUNITY),))


def readings(values: dict[str, list[int]]) -> bytes:
    lines = ["point_id,interval_start,energy_wh"]
    for pid, vals in values.items():
        lines += [f"{pid},{iso(START + i * 900_000_000)},{v}" for i, v in enumerate(vals)]
    return ("\n".join(lines) + "\n").encode()


async def test_community_charges_settle_once_and_corrections_pay_the_change(pool, pg_dsn, chain):
    market = await open_test_market(pg_dsn, "s")
    store = MeteringStore(pool, "s")
    svc = MeteringService(store, market.trades, interval_minutes=15, tz=ZoneInfo("Europe/Amsterdam"),
                          product_minutes=60)
    a, b = MEMBER_KEYS[0].address, MEMBER_KEYS[1].address
    try:
        worker = await funded_worker(pool, market, chain, payout_sources=[store])
        await svc.add_points([MeterPoint("a", a, PointKind.IMPORT), MeterPoint("b", b, PointKind.IMPORT)])
        await svc.put_tariff("default", "flat", [(START - 86_400_000_000, 30_000, 8_000)])
        await store.put_fee_schedule(START - 86_400_000_000, schedule_json(FEES))
        await svc.import_file(readings({"a": [100, 100, 100, 100], "b": [50, 0, 0, 50]}), "nov.csv", now_us=None)
        run = await svc.run_bills(START, END)
        # community: 2 000 ticks per Wh imported + the fixed fee for 1 h of a 720 h month (1 EUR)
        fixed = 720_000_000 // 720
        owed = {a: 400 * 2_000 + fixed, b: 100 * 2_000 + fixed}
        assert {r["member"]: int(r["community"]["units"]) for r in run} == owed
        pending = await store.pending_payouts()
        event = pending[0]["event_id"]
        assert event > METERING_EVENT_BASE and {p["event_id"] for p in pending} == {event}
        assert {p["member"]: p["amount_units"] for p in pending} == {m: -v for m, v in owed.items()}
        await worker.step()
        assert chain.registry.functions.payoutBatches(event).call()
        assert chain.collateral(a) == DEPOSIT - owed[a] and chain.collateral(b) == DEPOSIT - owed[b]
        assert market.engine.accounts[a].collateral == DEPOSIT - owed[a]
        assert await store.pending_payouts() == []
        # a crash after the chain took it but before the rows were marked: settled once
        await pool.execute("UPDATE bill_payouts SET settled_batch = NULL")
        w2 = make_worker(pool, market, reconnect(chain), payout_sources=[store])
        await w2.start()
        await w2.step()
        assert chain.collateral(a) == DEPOSIT - owed[a]
        assert await store.pending_payouts() == []
        # the same bill run again: nothing new to settle
        again = await svc.run_bills(START, END)
        assert not any(r["new"] for r in again) and await store.pending_payouts() == []
        # a correction of b's meter: b's bill gets a version 2 and only the change is collected
        await svc.import_file(readings({"b": [50, 0, 0, 150]}), "fix.csv", now_us=None)
        fixed_run = await svc.run_bills(START, END)
        assert [(r["member"], r["version"]) for r in fixed_run if r["new"]] == [(b, 2)]
        pending = await store.pending_payouts()
        assert [(p["member"], p["amount_units"]) for p in pending] == [(b, -100 * 2_000)]
        assert pending[0]["event_id"] > event
        await w2.step()
        assert chain.collateral(b) == DEPOSIT - owed[b] - 100 * 2_000
        assert chain.collateral(a) == DEPOSIT - owed[a]
        # reconciled: what was settled for each member equals its latest bill's community total
        settled = {}
        for p in await store.payouts():
            assert p["settled_batch"] is not None
            settled[p["member"]] = settled.get(p["member"], 0) - int(p["amount_units"])
        latest = {r["member"]: int(r["community_units"]) for r in await store.bills()}
        assert settled == latest
        w2.close()
    finally:
        worker.close()
        await market.close()


async def test_flexibility_payouts_and_penalties_are_lines_of_the_bills(pool, pg_dsn):
    """Through the BillItemSource port: flexibility's revenue shares and penalties of events
    delivered in the period appear on the members' bills (paid on chain by flexibility's own
    payouts: not part of what the member owes the community)."""
    market = await open_test_market(pg_dsn, "s")
    store = MeteringStore(pool, "s")
    svc = MeteringService(store, market.trades, interval_minutes=15, tz=ZoneInfo("Europe/Amsterdam"),
                          product_minutes=60)
    svc.bill_item_sources = [FlexStore(pool, "s")]
    a, b = MEMBER_KEYS[0].address, MEMBER_KEYS[1].address
    try:
        await svc.add_points([MeterPoint("a", a, PointKind.IMPORT), MeterPoint("b", b, PointKind.IMPORT)])
        await svc.put_tariff("default", "flat", [(START - 86_400_000_000, 30_000, 8_000)])
        await store.put_fee_schedule(START - 86_400_000_000, schedule_json(FEES))
        await svc.import_file(readings({"a": [100] * 4, "b": [50] * 4}), "nov.csv", now_us=None)
        for eid, start in ((1, START), (2, END)):  # event 2 is delivered after the period
            await pool.execute("INSERT INTO flex_events (market_id, event_id, period_start, period_end, direction, "
                               "origin, phase) VALUES ('s', $1, $2, $3, 'up', 'operator', 'settled')", eid,
                               from_us(start), from_us(start + 3_600_000_000))
        await pool.executemany("INSERT INTO flex_payouts (market_id, payout_id, event_id, member, amount_units) "
                               "VALUES ('s', $1, $2, $3, $4)",
                               [(1, 1, a, 150_000_000), (2, 1, b, -20_000_000), (3, 2, a, 999)])
        await svc.run_bills(START, END)
        bill_a = await svc.bill_for(a, START, END)
        bill_b = await svc.bill_for(b, START, END)
        lines_a = {x["name"]: int(x["amount"]["units"]) for x in bill_a["lines"]}
        lines_b = {x["name"]: int(x["amount"]["units"]) for x in bill_b["lines"]}
        assert lines_a["flexibility_payout"] == -150_000_000 and "flexibility_penalty" not in lines_a
        assert lines_b["flexibility_penalty"] == 20_000_000
        assert int(bill_a["total_units"]["units"]) == sum(lines_a.values())
        owed_a = 400 * 2_000 + 720_000_000 // 720
        assert int(bill_a["community_units"]["units"]) == owed_a  # flexibility is not the community's
    finally:
        await market.close()


async def test_a_bill_period_is_whole_products_and_overlaps_no_other(pool, pg_dsn):
    """The demo billed 23:00-01:30 then 23:00-05:00: the first period's community charges were
    collected twice on chain, and a cut at 01:30 billed the 01:00 product's money in one period
    and half its energy in the other. Refused now; the same period again is a correction."""
    market = await open_test_market(pg_dsn, "billp")
    store = MeteringStore(pool, "billp")
    svc = MeteringService(store, market.trades, interval_minutes=15, tz=ZoneInfo("Europe/Amsterdam"),
                          product_minutes=60)
    try:
        a = MEMBER_KEYS[0].address
        await svc.add_points([MeterPoint("a", a, PointKind.IMPORT)])
        await svc.put_tariff("default", "flat", [(START - 86_400_000_000, 30_000, 8_000)])
        await store.put_fee_schedule(START - 86_400_000_000, schedule_json(FEES))
        hour = 3_600_000_000
        await svc.run_bills(START, START + 2 * hour)
        with pytest.raises(VoltbourseError) as e:
            await svc.run_bills(START, START + 2 * hour + hour // 2)  # cuts a product
        assert e.value.code == "INVALID_BILLING_PERIOD" and "cuts a delivery product" in e.value.message
        for a, b in ((START, START + 3 * hour), (START + hour, START + 3 * hour), (START - hour, START + hour)):
            with pytest.raises(VoltbourseError) as e:
                await svc.run_bills(a, b)
            assert e.value.code == "BILL_PERIOD_OVERLAP", (a, b)
        await svc.run_bills(START, START + 2 * hour)  # the same period: a correction (no change here)
        await svc.run_bills(START + 2 * hour, START + 3 * hour)  # the next one
        periods = await pool.fetch("SELECT DISTINCT period_start, period_end FROM bills WHERE market_id = 'billp' "
                                   "ORDER BY 1")
        assert len(periods) == 2 and periods[0]["period_end"] == periods[1]["period_start"]
    finally:
        await market.close()
