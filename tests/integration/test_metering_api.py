"""Metering and billing over real HTTP and WebSocket on loopback, against a real market
(embedded PostgreSQL): points, CSV/xlsx uploads (valid, corrected, hostile), tariffs and
fees, bill runs (versions on correction), statements, KPIs, members' pushes (WS and signed
REST) and what a member may see."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from openpyxl import Workbook
from support.keys import AUTH, KEYS, OUTSIDER
from support.times import T0
from support.wsclient import peer

from exchange.core.units import from_us, iso
from exchange.metering.plugin import ROUTES
from exchange.metering.protocol import Reading, push_message, readings_digest
from exchange.tools.metering_demo import DemoMeters

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="meter", members=KEYS[:3])]

A, B, C = (k.address for k in KEYS[:3])
DAY = datetime(2026, 11, 20, tzinfo=UTC)  # a day before T0: measured
P = "/api/operator/metering"


def at(minutes: int) -> str:
    return iso(int((DAY + timedelta(minutes=minutes)).timestamp()) * 1_000_000)


def csv_body(rows: list[tuple[str, str, object]], header: str = "point_id,interval_start,energy_wh") -> bytes:
    return (header + "\n" + "".join(f"{p},{t},{e}\n" for p, t, e in rows)).encode()


VALID = [(pid, at(15 * i), 100 + 10 * i + k) for k, pid in enumerate(["A-imp", "B-imp", "B-exp"]) for i in range(4)]


class Api:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.s = session

    async def call(self, method: str, path: str, json=None, *, data=None, headers=AUTH, ctype=None):
        h = dict(headers)
        if ctype:
            h["Content-Type"] = ctype
        async with self.s.request(method, path, json=json, data=data, headers=h) as r:
            body = await r.read()
            if r.content_type == "application/json":
                return r.status, (await r.json())
            return r.status, body

    async def setup(self) -> None:
        st, body = await self.call("POST", f"{P}/points", {"points": [
            {"point_id": "A-imp", "member": A, "kind": "import"},
            {"point_id": "B-imp", "member": B, "kind": "import"},
            {"point_id": "B-exp", "member": B, "kind": "export"},
            {"point_id": "C-imp", "member": C, "kind": "import"}]})
        assert st == 201 and body["new"] == 4, body
        st, body = await self.call("PUT", f"{P}/tariffs/default", {"name": "Default", "prices": [
            {"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "30", "feed_in_ct_per_kwh": "8"},
            {"valid_from": at(30), "import_ct_per_kwh": "35.5", "feed_in_ct_per_kwh": "7.25"}]})
        assert st == 200 and body["prices"] == 2, body
        st, body = await self.call("PUT", f"{P}/fees", {
            "effective_from": "2026-01-01T00:00:00Z",
            "per_kwh": [{"name": "grid_import_fee", "ct_per_kwh": "8", "basis": "import",
                         "community_reduction_pct": "50"},
                        {"name": "marketplace_fee", "ct_per_kwh": "0.5", "basis": "p2p_traded", "payee": "community"}],
            "periodic": [{"name": "fixed_fee", "eur_per_month": "3", "payee": "community"}]})
        assert st == 200, body

    async def uploads(self) -> int:
        st, body = await self.call("GET", f"{P}/uploads")
        return len(body)


@pytest.fixture
async def api(server):
    async with aiohttp.ClientSession(base_url=server.http) as session:
        a = Api(session)
        await a.setup()
        yield a


def _concrete(path: str) -> str:
    return path.replace("{tariff_id}", "default").replace("{member}", A)


@pytest.mark.parametrize("route", [r for r in ROUTES if "operator" in r.tags], ids=lambda r: f"{r.method} {r.path}")
async def test_every_metering_operator_route_needs_the_token(api, route):
    for headers, status in [({}, 401), ({"Authorization": "Bearer nope"}, 403)]:
        st, body = await api.call(route.method, _concrete(route.path), headers=headers)
        assert st == status and body["error"] in ("UNAUTHENTICATED", "FORBIDDEN"), body


async def test_upload_correct_and_reupload(api):
    st, body = await api.call("POST", f"{P}/readings?filename=nov.csv", data=csv_body(VALID), ctype="text/csv")
    assert st == 201, body
    assert (body["rows"], body["new_values"], body["corrected"], body["unchanged"]) == (12, 12, 0, 0)
    # the same file again: its first import's result, nothing written
    st, again = await api.call("POST", f"{P}/readings", data=csv_body(VALID), ctype="text/csv")
    assert st == 201 and again["already_imported"] and again["upload_id"] == body["upload_id"]
    # a corrected file: one value differs, one reading added
    fixed = [(p, t, (999 if (p, t) == ("A-imp", at(15)) else e)) for p, t, e in VALID] + [("C-imp", at(0), 5)]
    st, body = await api.call("POST", f"{P}/readings", data=csv_body(fixed), ctype="text/csv")
    assert st == 201 and (body["new_values"], body["corrected"], body["unchanged"]) == (1, 1, 11), body
    st, corr = await api.call("GET", f"{P}/corrections?point_id=A-imp")
    assert [(c["interval_start"], c["old_wh"], c["new_wh"]) for c in corr] == [(at(15), 110, 999)]
    assert corr[0]["upload_id"] == body["upload_id"]
    # gaps are reported (C-imp has one reading: no gap; a point with a hole has one)
    holes = [("A-imp", at(60), 1), ("A-imp", at(120), 1)]
    st, body = await api.call("POST", f"{P}/readings", data=csv_body(holes), ctype="text/csv")
    assert st == 201 and body["gaps"] == {"A-imp": 3} and body["points_with_gaps"] == 1


async def test_xlsx_upload(api):
    wb = Workbook()
    ws = wb.active
    ws.append(["point_id", "interval_start", "energy_wh"])
    for p, t, e in VALID:
        ws.append([p, t, e])
    ws.append(["C-imp", at(15), 7.0])  # a number cell: accepted when whole
    buf = io.BytesIO()
    wb.save(buf)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    st, body = await api.call("POST", f"{P}/readings?filename=nov.xlsx", data=buf.getvalue(), ctype=xlsx)
    assert st == 201 and body["new_values"] == 13, body
    # Excel date cells carry no time zone: refused like a CSV time without offset
    ws.append(["C-imp", datetime(2026, 11, 20, 1, 0), 7])
    buf = io.BytesIO()
    wb.save(buf)
    st, body = await api.call("POST", f"{P}/readings", data=buf.getvalue(), ctype=xlsx)
    assert st == 422 and body["errors"][0]["line"] == 15 and "offset" in body["errors"][0]["reason"], body


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/worksheets/sheet1.xml", b"<" + b"a" * (50 * 1024 * 1024) + b">")
    return buf.getvalue()


def _xlsx(sheet_xml: bytes | None, shared: bytes | None = None) -> bytes:
    """A hand-made workbook (what openpyxl only reads lazily, cell by cell)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
                   '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
                   'officedocument.spreadsheetml.sheet.main+xml"/>'
                   + ('<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
                      'officedocument.spreadsheetml.worksheet+xml"/>' if sheet_xml is not None else "")
                   + "</Types>")
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/relationships"><Relationship Id="r1" Type="http://schemas.openxmlformats.org/'
                   'officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        sheets = '<sheet name="S" sheetId="1" r:id="rId1"/>' if sheet_xml is not None else ""
        z.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/'
                   'spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/'
                   f'relationships"><sheets>{sheets}</sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships">'
                   + ('<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                      'relationships/worksheet" Target="worksheets/sheet1.xml"/>' if sheet_xml is not None else "")
                   + "</Relationships>")
        if sheet_xml is not None:
            z.writestr("xl/worksheets/sheet1.xml", b'<?xml version="1.0"?><worksheet xmlns="http://schemas.'
                       b'openxmlformats.org/spreadsheetml/2006/main"><sheetData>' + sheet_xml
                       + b"</sheetData></worksheet>")
    return buf.getvalue()


HOSTILE = [
    ("before 1970", csv_body([("A-imp", "1900-01-01T00:00:00Z", 10)]), 2, "interval_start"),
    ("before 2000", csv_body([("A-imp", "1999-12-31T23:45:00Z", 10)]), 2, "interval_start"),
    ("xlsx without a sheet", _xlsx(None), 0, "file"),
    ("xlsx number cell of text", _xlsx(b'<row r="1"><c r="A1" t="inlineStr"><is><t>point_id</t></is></c>'
                                       b'<c r="B1" t="inlineStr"><is><t>interval_start</t></is></c>'
                                       b'<c r="C1" t="inlineStr"><is><t>energy_wh</t></is></c></row>'
                                       b'<row r="2"><c r="A2"><v>abc</v></c></row>'), 0, "file"),
    ("xlsx shared string out of range", _xlsx(b'<row r="1"><c r="A1" t="s"><v>999</v></c></row>'), 0, "file"),
    ("wrong columns", csv_body([("A-imp", at(0), 1)], header="meter,time,kwh"), 1, "header"),
    ("text in numbers", csv_body([("A-imp", at(0), "12a"), ("A-imp", at(15), "1e3")]), 2, "energy_wh"),
    ("float energy", csv_body([("A-imp", at(0), "1.5")]), 2, "energy_wh"),
    ("negative energy", csv_body([("A-imp", at(0), -5)]), 2, "energy_wh"),
    ("underscore digits", csv_body([("A-imp", at(0), "1_000")]), 2, "energy_wh"),
    ("unknown meter", csv_body([("NOPE", at(0), 1)]), 2, "point_id"),
    ("off the grid", csv_body([("A-imp", at(7), 1)]), 2, "interval_start"),
    ("no offset", csv_body([("A-imp", "2026-11-20T00:00:00", 1)]), 2, "interval_start"),
    ("not ended yet", csv_body([("A-imp", iso(T0 + 3600 * 10**6), 1)]), 2, "interval_start"),
    ("duplicate", csv_body([("A-imp", at(0), 1), ("A-imp", at(0), 2)]), 3, "interval_start"),
    ("overlapping intervals",
     b"point_id,interval_start,interval_end,energy_wh\n" + f"A-imp,{at(0)},{at(30)},5\n".encode(), 2, "interval_end"),
    ("not utf-8", b"point_id,interval_start,energy_wh\n\xff\xfe,x,1\n", 0, "file"),
    ("ragged row", b"point_id,interval_start,energy_wh\nA-imp,x\n", 2, "row"),
    ("zip bomb xlsx", _zip_bomb(), 0, "file"),
    ("broken xlsx", b"PK\x03\x04garbage", 0, "file"),
    ("empty", b"point_id,interval_start,energy_wh\n", 2, "row"),
    ("two signs", csv_body([("A-imp", at(0), "--5")]), 2, "energy_wh"),  # answered 500 (int('--5'))
]


@pytest.mark.parametrize(("name", "data", "line", "column"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_uploads_import_nothing(api, name, data, line, column):
    st, _ = await api.call("POST", f"{P}/readings", data=csv_body(VALID[:2]), ctype="text/csv")
    assert st == 201
    before = await api.uploads()
    st, body = await api.call("POST", f"{P}/readings", data=data, ctype="text/csv")
    assert st == 422 and body["error"] == "INVALID_UPLOAD", body
    assert body["errors"][0]["line"] == line and body["errors"][0]["column"] == column, body
    assert body["errors"][0]["reason"] and body["message"]
    assert await api.uploads() == before
    st, corr = await api.call("GET", f"{P}/corrections")
    assert corr == []
    st, _ = await api.call("GET", f"{P}/points")  # the server is unaffected
    assert st == 200


async def test_every_error_of_a_file_is_listed_and_counted(api):
    rows = [("A-imp", at(15 * i), "x") for i in range(150)]
    st, body = await api.call("POST", f"{P}/readings", data=csv_body(rows), ctype="text/csv")
    assert st == 422 and body["error_count"] == 150 and len(body["errors"]) == 100
    assert [e["line"] for e in body["errors"][:3]] == [2, 3, 4]


@pytest.mark.server(market_id="meter", members=KEYS[:3], metering_upload_max_mb=1)
async def test_upload_too_large(api):
    big = csv_body(VALID) + b"#" * (2 * 1024 * 1024)
    st, body = await api.call("POST", f"{P}/readings", data=big, ctype="text/csv")
    assert st == 413 and body["error"] == "UPLOAD_TOO_LARGE"

    async def chunks():  # no Content-Length: refused while streaming
        for _ in range(3):
            yield b"x" * (600 * 1024)

    st, body = await api.call("POST", f"{P}/readings", data=chunks(), ctype="text/csv")
    assert st == 413 and body["error"] == "UPLOAD_TOO_LARGE"
    assert await api.uploads() == 0


async def test_bad_tariff_and_fee_input(api):
    st, body = await api.call("PUT", f"{P}/tariffs/t1", {"name": "x", "prices": [
        {"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "30.0001", "feed_in_ct_per_kwh": "8"}]})
    assert st == 422, body
    st, body = await api.call("PUT", f"{P}/tariffs/t1?name=Spot", data=b"valid_from,import_ct_per_kwh,feed_in_ct_per_kwh\n"
                              b"2026-01-01T00:00:00Z,abc,8\n", ctype="text/csv")
    assert st == 422 and body["errors"][0] == {"line": 2, "column": "import_ct_per_kwh",
                                               "reason": body["errors"][0]["reason"]}
    # what the JSON form refuses by its pattern, the CSV form too (Infinity and 1e400 answered 500)
    for cell in ("Infinity", "NaN", "1e400", "1e13", "1e-3", "1234567890"):
        st, body = await api.call("PUT", f"{P}/tariffs/t1?name=Spot",
                                  data=b"valid_from,import_ct_per_kwh,feed_in_ct_per_kwh\n"
                                  + f"2026-01-01T00:00:00Z,{cell},8\n".encode(), ctype="text/csv")
        assert st == 422 and body["errors"][0]["column"] == "import_ct_per_kwh", (cell, body)
    st, body = await api.call("PUT", f"{P}/fees", {"effective_from": "2026-01-01T00:00:00Z", "per_kwh": [
        {"name": "x", "ct_per_kwh": "1", "basis": "import", "community_reduction_pct": "150"}]})
    assert st == 422, body
    st, body = await api.call("PUT", f"{P}/members/{A}/tariff", {"tariff_id": "nope",
                                                               "effective_from": "2026-01-01T00:00:00Z"})
    assert st == 404 and body["error"] == "UNKNOWN_TARIFF"
    st, body = await api.call("PUT", f"{P}/tariffs/t2?name=Spot", data=b"valid_from,import_ct_per_kwh,feed_in_ct_per_kwh\n"
                              b"2026-01-01T00:00:00Z,25.125,6\n", ctype="text/csv")
    assert st == 200 and body["prices"] == 1
    st, body = await api.call("PUT", f"{P}/members/{C}/tariff", {"tariff_id": "t2", "effective_from": at(0),
                                                               "contracted_power_kw": "6.5"})
    assert st == 200 and body["contracted_power_w"] == 6500


async def test_a_period_is_billed_once_it_has_ended(api, server):
    """A bill run for a period that has not ended billed it from estimates and charged it at
    once (then fixed: a real bill later could only be a correction)."""
    now = server.market.runtime.clock.now_us()
    ended = now - now % 3_600_000_000
    for start, end in ((ended, ended + 3_600_000_000), (4_070_908_800_000_000, 4_070_912_400_000_000)):  # 2099
        st, body = await api.call("POST", f"{P}/bills/run", {"start": iso(start), "end": iso(end)})
        assert st == 422 and body["error"] == "INVALID_BILLING_PERIOD" and "has ended" in body["message"], body
    st, body = await api.call("GET", f"{P}/bills")
    assert st == 200 and body == []
    st, body = await api.call("POST", f"{P}/bills/run", {"start": iso(ended - 3_600_000_000), "end": iso(ended)})
    assert st == 200, body


async def test_bill_run_versions_statements_and_kpis(api):
    st, _ = await api.call("POST", f"{P}/readings", data=csv_body(VALID), ctype="text/csv")
    period = {"start": at(0), "end": at(60)}
    st, run = await api.call("POST", f"{P}/bills/run", period)
    assert st == 200, run
    by = {b["member"]: b for b in run["bills"]}
    assert set(by) == {A, B, C} and all(b["version"] == 1 and b["new"] for b in by.values())
    # A imported 100,110 at 30 ct and 120,130 at 35.5 ct; grid fee 8 ct on all; fixed 3 EUR/month for 1 h
    energy = (100 + 110) * 30_000 + (120 + 130) * 35_500
    grid_fee = (100 + 110 + 120 + 130) * 8_000
    st, bill = await api.call("GET", f"{P}/bills/{A}?start={at(0)}&end={at(60)}")
    assert st == 200, bill
    lines = {x["name"]: int(x["amount"]["units"]) for x in bill["lines"]}
    assert lines["supplier_import"] == energy and lines["grid_import_fee"] == grid_fee
    assert int(bill["total_units"]["units"]) == sum(lines.values())
    # the same run again changes nothing
    st, again = await api.call("POST", f"{P}/bills/run", period)
    assert all(not b["new"] and b["version"] == 1 for b in again["bills"])
    # a correction: only A's bill gets a new version, with the change
    st, _ = await api.call("POST", f"{P}/readings", data=csv_body([("A-imp", at(45), 140)]), ctype="text/csv")
    st, third = await api.call("POST", f"{P}/bills/run", period)
    changed = {b["member"]: b for b in third["bills"] if b["new"]}
    assert set(changed) == {A} and changed[A]["version"] == 2
    assert int(changed[A]["change_units"]) == 10 * 35_500 + 10 * 8_000
    # statements
    st, text = await api.call("GET", f"{P}/bills/{A}?start={at(0)}&end={at(60)}&format=csv")
    assert st == 200 and b"supplier_import" in text
    rows = list(csv.reader(io.StringIO(text.decode())))
    assert rows[0][0] == "line"
    st, page = await api.call("GET", f"{P}/bills/{A}?start={at(0)}&end={at(60)}&format=html")
    assert st == 200 and b"<table" in page and A.encode() in page
    st, pdf = await api.call("GET", f"{P}/bills/{A}?start={at(0)}&end={at(60)}&format=pdf")
    assert st == 200 and pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    st, body = await api.call("GET", f"{P}/bills/{C}?start={at(0)}&end={at(120)}")
    assert st == 404 and body["error"] == "NO_BILL"
    # KPIs from meters
    st, k = await api.call("GET", f"{P}/kpis?start={at(0)}&end={at(60)}&by=day")
    assert st == 200, k
    assert k["members"][A]["consumption_wh"] == 100 + 110 + 120 + 140
    assert k["members"][A]["self_sufficiency"] == "0.000000"
    assert len(k["days"]) == 1
    st, s = await api.call("GET", f"{P}/settlement?start={at(0)}&end={at(60)}")
    assert st == 200 and s["balanced"] and s["community"]["import_wh"] > 0
    st, body = await api.call("GET", f"{P}/settlement?start={at(0)}&end={at(7)}")
    assert st == 422 and body["error"] == "INVALID_BILLING_PERIOD"


async def test_member_pushes_and_reads_over_ws(api, server, http):
    a = await peer(http, server, 0)
    b = await peer(http, server, 1)
    r = await a.request({"type": "meter_readings", "id": 1, "readings": [
        {"point_id": "A-imp", "interval_start": at(0), "energy_wh": 5}]})
    assert r["type"] == "response" and r["result"]["new_values"] == 1, r
    r = await a.request({"type": "meter_readings", "id": 2, "readings": [
        {"point_id": "B-imp", "interval_start": at(0), "energy_wh": 5}]})
    assert r["type"] == "error" and r["code"] == "NOT_YOUR_POINT" and r["id"] == 2
    r2 = await a.request({"type": "meter_readings", "id": 2, "readings": [
        {"point_id": "NOPE-imp", "interval_start": at(0), "energy_wh": 5}]})
    # a point that does not exist is answered as another member's: no member learns which exist
    assert r2["code"] == r["code"] and r2["message"].replace("NOPE", "B") == r["message"], (r, r2)
    r = await a.request({"type": "meter_readings", "id": 3, "readings": [
        {"point_id": "A-imp", "interval_start": at(7), "energy_wh": 5}]})
    assert r["type"] == "error" and r["code"] == "INVALID_UPLOAD" and r["id"] == 3
    r = await a.request({"type": "meter_readings", "id": 4, "readings": [
        {"point_id": "A-imp", "interval_start": at(0), "energy_wh": -1}]})
    assert r["type"] == "error" and r["code"] == "INVALID_MESSAGE" and r["id"] == 4
    r = await a.request({"type": "meter_points", "id": 5})
    assert [p["point_id"] for p in r["result"]["points"]] == ["A-imp"]
    st, _ = await api.call("POST", f"{P}/bills/run", {"start": at(0), "end": at(60)})
    r = await b.request({"type": "my_bill", "id": 6, "start": at(0), "end": at(60)})
    assert r["result"]["member"] == B
    r = await a.request({"type": "my_bills", "id": 7})
    assert len(r["result"]["bills"]) == 1
    r = await a.request({"type": "my_energy", "id": 8, "start": at(0), "end": at(60), "by": "interval"})
    assert [x["import_wh"] for x in r["result"]["rows"]] == [5, 0, 0, 0] and r["result"]["member"] == A
    assert r["result"]["rows"][1]["estimated"] == 1  # no reading: estimated and flagged


def _signed(member: str, signer, nonce: int, readings: list[dict]) -> dict:
    digest = readings_digest([Reading.model_validate_json(json.dumps(r)) for r in readings])
    sig = Account.sign_message(encode_defunct(text=push_message("meter", member, nonce, digest)), signer.key)
    return {"member": member, "signer": signer.address, "nonce": nonce, "readings": readings,
            "signature": "0x" + sig.signature.hex().removeprefix("0x")}


async def test_signed_rest_push_by_member_and_device(api, server, http):
    readings = [{"point_id": "A-imp", "interval_start": at(0), "energy_wh": 42}]
    nonce = int(time.time() * 1000)
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, KEYS[0], nonce, readings), headers={})
    assert st == 201 and body["new_values"] == 1, body
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, KEYS[0], nonce, readings), headers={})
    assert st == 403 and "nonce" in body["message"]  # a replay
    device = Account.create()
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, device, 1, readings), headers={})
    assert st == 403  # not registered yet
    a = await peer(http, server, 0)
    r = await a.request({"type": "meter_device_register", "id": 1, "device": device.address, "label": "home"})
    assert r["result"]["registered"]
    corrected = [{"point_id": "A-imp", "interval_start": at(0), "energy_wh": 43}]
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, device, 1, corrected), headers={})
    assert st == 201 and body["corrected"] == 1, body
    # a device of A cannot push B's readings; a signature over other readings is refused
    st, body = await api.call("POST", "/api/metering/readings", _signed(B, device, 2, [
        {"point_id": "B-imp", "interval_start": at(0), "energy_wh": 1}]), headers={})
    assert st == 403
    forged = _signed(A, device, 3, corrected)
    forged["readings"][0]["energy_wh"] = 9999
    st, body = await api.call("POST", "/api/metering/readings", forged, headers={})
    assert st == 401
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, OUTSIDER, 5, readings), headers={})
    assert st == 403
    r = await a.request({"type": "meter_device_revoke", "id": 2, "device": device.address})
    assert r["result"]["revoked"]
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, device, 10, corrected), headers={})
    assert st == 403
    st, corr = await api.call("GET", f"{P}/corrections?point_id=A-imp")
    assert [(c["old_wh"], c["new_wh"]) for c in corr] == [(42, 43)]
    assert from_us(T0) > DAY


async def test_a_signer_not_the_members_learns_nothing_of_its_points(api, server, http):
    """An outsider's signed push for A: A's real point, B's, one that does not exist and a real
    one off its intervals all answer the same 403 FORBIDDEN. The points were checked before the
    signer, so NOT_YOUR_POINT or INVALID_UPLOAD told anybody which point ids were A's."""
    answers = set()
    for nonce, readings in enumerate([
            [{"point_id": "A-imp", "interval_start": at(0), "energy_wh": 1}],
            [{"point_id": "B-imp", "interval_start": at(0), "energy_wh": 1}],
            [{"point_id": "nowhere", "interval_start": at(0), "energy_wh": 1}],
            [{"point_id": "A-imp", "interval_start": at(7), "energy_wh": 1}]], start=1):  # not on an interval
        st, body = await api.call("POST", "/api/metering/readings", _signed(A, OUTSIDER, nonce, readings), headers={})
        answers.add((st, body["error"], body["message"]))
    assert answers == {(403, "FORBIDDEN", "the signer is not the member nor a device key it registered")}, answers
    # the member's own key is no device it can revoke (which locked its own pushes out): its row
    # (made by its first push) stays, and one an older version revoked no longer counts
    nonce = int(time.time() * 1000)
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, KEYS[0], nonce, [
        {"point_id": "A-imp", "interval_start": at(0), "energy_wh": 7}]), headers={})
    assert st == 201, body
    a = await peer(http, server, 0)
    r = await a.request({"type": "meter_device_revoke", "id": 1, "device": A})
    assert r["result"]["revoked"] is False
    pool = server.market.pool
    assert await pool.fetchval("SELECT revoked FROM meter_devices WHERE device = $1 AND member = $1", A) is False
    await pool.execute("UPDATE meter_devices SET revoked = true WHERE device = $1 AND member = $1", A)
    st, body = await api.call("POST", "/api/metering/readings", _signed(A, KEYS[0], nonce + 1, [
        {"point_id": "A-imp", "interval_start": at(0), "energy_wh": 8}]), headers={})
    assert st == 201, body


async def test_a_point_is_for_a_member(api):
    """A point for an address that is no member (a mistyped one) was registered: its readings
    were billed and the charges written off on chain for want of collateral."""
    st, body = await api.call("POST", f"{P}/points", {"points": [
        {"point_id": "GHOST", "member": OUTSIDER.address, "kind": "import"},
        {"point_id": "A-exp", "member": A, "kind": "export"}]})
    assert st == 404 and body["error"] == "UNKNOWN_MEMBER" and OUTSIDER.address in body["message"], body
    st, pts = await api.call("GET", f"{P}/points")
    assert {p["point_id"] for p in pts} == {"A-imp", "B-imp", "B-exp", "C-imp"}  # nothing of the refused request


async def test_public_metering_rules(api):
    st, body = await api.call("GET", "/api/metering", headers={})
    assert st == 200 and body["interval_minutes"] == 15 and body["readings_per_push"] == 150
    assert body["readings_per_rest_push"] == 2000
    assert body["timezone"] == "Europe/Amsterdam" and "import" in body["point_kinds"]


async def test_pushes_up_to_their_limits(api, server, http):
    """A WS push of 150 readings fits in one frame; a signed REST push carries 2 000 (body
    above 64 KiB, the API's usual limit)."""
    pts = {"points": [{"point_id": f"A-x{k}", "member": A, "kind": "import"} for k in range(20)]}
    st, _ = await api.call("POST", f"{P}/points", pts)
    readings = [{"point_id": f"A-x{k}", "interval_start": at(15 * i), "energy_wh": 100_000 + i}
                for k in range(20) for i in range(100)]
    a = await peer(http, server, 0)
    r = await a.request({"type": "meter_readings", "id": 1, "readings": readings[:150]})
    assert r["type"] == "response" and r["result"]["new_values"] == 150, r
    body = _signed(A, KEYS[0], int(time.time() * 1000), readings)
    assert len(json.dumps(body)) > 64 * 1024
    st, res = await api.call("POST", "/api/metering/readings", body, headers={})
    assert st == 201 and res["rows"] == 2000 and res["new_values"] == 1850, res


async def test_the_demos_meters_have_prices_for_their_whole_history(server, http):
    """The demo uploads a week of readings before it starts: the portal's last 7 days and the
    operator page's month of KPIs answered NO_TARIFF when the tariff began at the demo's start."""
    since = datetime(2026, 11, 27, 22, tzinfo=UTC)
    demo = DemoMeters(server.runner.app, [k.address for k in KEYS[:3]], "Europe/Berlin")
    await demo.setup(int(since.timestamp()) * 1_000_000)
    st, k = await Api(http).call("GET", f"{server.http}{P}/kpis?month=2026-11&by=day")
    assert st == 200 and k["members"], k
    week = since - timedelta(days=7)
    for stamp in (week, datetime(2026, 10, 31, 23, tzinfo=UTC)):  # Nov 1 in Berlin, the month's first hour
        st, s = await Api(http).call("GET", f"{server.http}{P}/settlement?start={iso(int(stamp.timestamp()) * 10**6)}"
                                            f"&end={iso(int((stamp + timedelta(days=1)).timestamp()) * 10**6)}")
        assert st == 200 and s["balanced"], s
