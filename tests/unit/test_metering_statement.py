"""Bill statements (exchange.metering.statement): the exact CSV parses back and adds up to
the total, the HTML page shows every line and escapes everything, the hand-written PDF
has exact xref offsets, every line's text, page breaks, and literal strings that parse
back to the text (a small PDF string parser here, per ISO 32000-1 7.3.4.2)."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.metering.core.bill import bill as make_core_bill
from exchange.metering.core.model import EXAMPLE_FEES
from exchange.metering.core.settle import Flows
from exchange.metering.service import bill_json, money_json
from exchange.metering.statement import (
    CSV_HEADER,
    line_label,
    pdf_string,
    period_words,
    render_csv,
    render_html,
    render_pdf,
    statement,
    text_width,
    winansi,
)

pytestmark = pytest.mark.unit

NOV_1 = 1_793_491_200_000_000   # 2026-11-01T00:00:00Z
DEC_1 = 1_796_083_200_000_000   # 2026-12-01T00:00:00Z


def money(units: int) -> dict[str, str]:
    return {"units": str(units), "eur": str(Decimal(units).scaleb(-8))}


def line(name: str, payee: str, units: int, energy_wh: int | None = None, rate_ticks: int | None = None,
         detail: str = "") -> dict[str, Any]:
    return {"name": name, "payee": payee, "energy_wh": energy_wh, "rate_ticks": rate_ticks,
            "amount": money(units), "detail": detail}


def a_bill(lines: list[dict[str, Any]], *, member: str = "0x" + "ab" * 20, grid_only: int = 200_000_000,
           estimated: int = 0, **extra: Any) -> dict[str, Any]:
    total = sum(int(x["amount"]["units"]) for x in lines)
    community = sum(int(x["amount"]["units"]) for x in lines if x["payee"] == "community")
    flows = {"import_wh": 12_000, "export_wh": 3_500, "bought_wh": 4_000, "sold_wh": 1_250, "from_peers_wh": 4_000,
             "to_peers_wh": 1_250, "supplier_import_wh": 8_000, "supplier_export_wh": 2_250, "shortfall_wh": 0,
             "estimated_intervals": estimated}
    return {"member": member, "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "tariff": "default",
            "lines": lines, "total_units": money(total),
            "total_cents": int((Decimal(total) / 1_000_000).quantize(Decimal(1), rounding="ROUND_HALF_EVEN")),
            "grid_only_units": money(grid_only), "savings_units": money(grid_only - total),
            "community_units": money(community), "flows": flows, "estimated_intervals": estimated, **extra}


LINES = [
    line("p2p_bought", "peers", 40_000_000, 4_000, 10_000),
    line("p2p_sold", "peers", -11_250_000, 1_250, 9_000),
    line("supplier_import", "supplier", 240_000_123, 8_000),
    line("supplier_export", "supplier", -15_750_001, 2_250),
    line("grid_import_fee", "supplier", 80_000_000, 12_000, 8_000, "4000 Wh traded in the community at 50.00 % less"),
    line("marketplace_fee", "community", 2_625_000, 5_250, 500),
    line("fixed_fee", "community", 300_000_000, detail="1.0000 month(s)"),
    line("solar_bonus_credit", "community", -500_000),            # a name the statement does not know
]


# ---------------------------------------------------------------------------- CSV
def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_csv_round_trip_is_exact_and_adds_up() -> None:
    b = a_bill(LINES)
    rows = parse_csv(render_csv(b))
    assert tuple(rows[0]) == CSV_HEADER
    body, tail = rows[1:-3], rows[-3:]
    assert [r[0] for r in body] == [x["name"] for x in LINES]
    assert [r[0] for r in tail] == ["total", "grid_only", "savings"]
    amounts = [Decimal(r[4]) for r in body]
    assert amounts == [Decimal(int(x["amount"]["units"])).scaleb(-8) for x in LINES]
    assert sum(amounts, Decimal(0)) == Decimal(tail[0][4]) == Decimal(int(b["total_units"]["units"])).scaleb(-8)
    assert Decimal(tail[1][4]) - Decimal(tail[0][4]) == Decimal(tail[2][4])
    assert all(re.fullmatch(r"-?\d+\.\d{8}", r[4]) for r in rows[1:])   # every amount with all 8 decimals
    first = body[0]
    assert first[1:4] == ["peers", "4.000", "10.000"]
    assert body[2][3] == "" and body[6][2] == ""                        # no rate / no energy: empty
    assert body[2][4] == "2.40000123"


def test_csv_quotes_and_defuses_formulas() -> None:
    detail = 'said "hi", then\r\nleft'
    b = a_bill([line("fixed_fee", "community", 1, detail=detail), line("odd", "community", 2, detail="=1+1")])
    text = render_csv(b)
    assert text.endswith("\r\n")
    rows = parse_csv(text)
    assert rows[1][5] == detail
    assert rows[2][5] == "'=1+1"
    assert rows[-3][4] == "0.00000003"


def test_csv_of_a_bill_from_the_core() -> None:
    f = Flows(import_wh=12_345, export_wh=2_001, bought_wh=4_321, sold_wh=999, from_peers_wh=4_321, to_peers_wh=999,
              supplier_import_wh=8_024, supplier_export_wh=1_002, supplier_import_units=8_024 * 28_123,
              supplier_export_units=1_002 * 7_777, grid_only_import_units=12_345 * 28_123,
              grid_only_export_units=2_001 * 7_777, p2p_paid_units=4_321 * 15_001, p2p_received_units=999 * 14_999,
              intervals=2_880, estimated_intervals=3)
    core = make_core_bill("0x" + "cd" * 20, NOV_1, DEC_1, f, EXAMPLE_FEES, ZoneInfo("Europe/Berlin"),
                          contracted_power_w=6_500)
    b = bill_json(core, "default")
    rows = parse_csv(render_csv(b))
    assert len(rows) == 1 + len(b["lines"]) + 3
    assert sum((Decimal(r[4]) for r in rows[1:-3]), Decimal(0)) == Decimal(rows[-3][4]) == Decimal(core.total_units).scaleb(-8)
    page = render_html(b, community="Sonnenhof")
    assert "3 metering intervals" in page
    for x in b["lines"]:
        assert line_label(x["name"]) in page
    pdf = render_pdf(b, community="Sonnenhof")
    check_xref(pdf)


# ---------------------------------------------------------------------------- HTML
def test_html_shows_every_line_the_summary_and_energy() -> None:
    b = a_bill(LINES, version=2, digest="9f" * 32)
    page = render_html(b, community="Sonnenhof Energy Community")
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    for name in ("Energy bought from peers", "Energy sold to peers", "Energy from your supplier", "Grid import fee",
                 "Marketplace fee", "Fixed monthly fee", "solar bonus credit"):
        assert f'<th scope="row">{name}' in page
    assert "<caption>" in page and 'scope="col"' in page
    assert "@media print" in page
    assert "<script" not in page and "src=" not in page and "http://" not in page and "https://" not in page
    assert "November 2026" in page and "Version</dt><dd>2<" in page and "9f" * 32 in page
    # rounded to the cent, half-even; the total from total_cents
    assert '<td class="num">2.40</td>' in page            # 2.40000123
    assert '<td class="num">-0.16</td>' in page           # -0.15750001
    assert '<td class="num">0.00</td></tr>' in page       # -0.005 -> -0.00 (half-even), shown as 0.00
    assert f"\u20ac{Decimal(b['total_cents']).scaleb(-2)}" in page
    assert "exact amounts" in page and "CSV and JSON" in page
    assert "4.000 kWh" in page and "12.000 kWh" in page and "Sold to peers" in page
    assert "estimated" not in page


def test_html_half_even_and_estimated_note() -> None:
    b = a_bill([line("a", "community", 500_000), line("b", "community", 1_500_000),
                line("c", "community", 2_500_000)], estimated=1)
    page = render_html(b, community="C")
    amounts = re.findall(r'<td class="num">([^<]*)</td></tr>', page.split("<tbody>")[1].split("</tbody>")[0])
    assert amounts == ["0.00", "0.02", "0.02"]
    assert "1 metering interval of this period" in page


def test_html_escapes_everything() -> None:
    evil = "<script>alert('x')</script>"
    b = a_bill([line("p2p_bought", "peers", 1, 1, 1, detail=evil), line(evil, evil, 2)], member=evil,
               tariff=evil, version=evil)
    page = render_html(b, community=evil)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 7      # title, h1, h2, member, period..., tariff, version, line, payee, detail


def test_period_words() -> None:
    assert period_words("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z") == "November 2026"
    berlin = ZoneInfo("Europe/Berlin")
    assert period_words("2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", berlin) == "November 2026"
    assert period_words("2026-10-31T23:00:00Z", "2027-01-31T23:00:00Z", berlin) == "November 2026 to January 2027"
    assert period_words("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z") == "December 2026"
    assert period_words("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", berlin) == "29 March 2026"   # 23 h DST day
    assert period_words("2026-11-01T00:00:00Z", "2026-11-16T00:00:00Z") == "1 November 2026 to 15 November 2026"
    assert period_words("2026-11-01T06:15:00Z", "2026-11-01T18:00:00Z") == \
        "1 November 2026 06:15 to 1 November 2026 18:00 (UTC)"


# ---------------------------------------------------------------------------- PDF
def check_xref(pdf: bytes) -> int:
    """Check the xref table's every offset against its ``N 0 obj``; the number of objects."""
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.rstrip().endswith(b"%%EOF")
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\s*$", pdf).group(1))    # type: ignore[union-attr]
    assert pdf[start:start + 5] == b"xref\n"
    m = re.match(rb"xref\n0 (\d+)\n", pdf[start:])
    assert m
    size = int(m.group(1))
    table = pdf[start + m.end():start + m.end() + 20 * size]
    entries = [table[i:i + 20] for i in range(0, len(table), 20)]
    assert entries[0] == b"0000000000 65535 f \n"
    for n, e in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", e), e
        off = int(e[:10])
        assert pdf[off:].startswith(b"%d 0 obj\n" % n), (n, pdf[off:off + 20])
    trailer = pdf[start + m.end() + 20 * size:]
    assert trailer.startswith(b"trailer\n<< /Size %d " % size)
    assert len(re.findall(rb"\d+ 0 obj\n", pdf)) == size - 1
    return size - 1


def streams(pdf: bytes) -> list[bytes]:
    out = []
    for m in re.finditer(rb"<< /Length (\d+) >>\nstream\n", pdf):
        n = int(m.group(1))
        data = pdf[m.end():m.end() + n]
        assert pdf[m.end() + n:m.end() + n + 10] == b"\nendstream"
        out.append(data)
    return out


def test_pdf_structure_and_text() -> None:
    b = a_bill(LINES, version=3, estimated=2, grid_only=1_000_000_000)
    pdf = render_pdf(b, community="Sonnenhof (Süd) \\ Energie")
    n = check_xref(pdf)
    content = b"".join(streams(pdf))
    assert len(streams(pdf)) == 1 and n == 7
    assert b"/Count 1" in pdf and b"/BaseFont /Helvetica " in pdf and b"/WinAnsiEncoding" in pdf
    s = statement(b, community="x")
    for r in s.rows:
        assert pdf_string(r.name) in content
        assert pdf_string(r.amount) in content
        assert pdf_string(r.energy) in content
    assert pdf_string("Sonnenhof (S\u00fcd) \\ Energie") == b"(Sonnenhof \\(S\\374d\\) \\\\ Energie)"
    assert pdf_string("Sonnenhof (S\u00fcd) \\ Energie") in content
    assert pdf_string(s.total) in content and pdf_string("Your savings") in content
    extra = render_pdf(a_bill(LINES, grid_only=0), community="x")
    assert pdf_string("Your extra cost compared with the grid only") in extra
    assert pdf_string("Bought from peers") in content and pdf_string("4.000 kWh") in content
    assert pdf_string("Page 1 of 1") in content
    assert b"estimated" in content
    assert all(32 <= c < 127 or c == 10 for c in content)        # plain ASCII content


def test_pdf_many_lines_break_pages() -> None:
    lines = [line(f"fee_{i:03d}", "community", 1_000_000 + i, 100 + i, 1_000,
                  detail="a detail long enough to wrap " * (i % 5)) for i in range(200)]
    b = a_bill(lines)
    pdf = render_pdf(b, community="Big")
    n = check_xref(pdf)
    pages = streams(pdf)
    assert len(pages) >= 5 and n == 5 + 2 * len(pages)
    assert b"/Count %d" % len(pages) in pdf
    content = b"".join(pages)
    for i in range(200):
        assert pdf_string(f"fee {i:03d}") in content
    for k, page in enumerate(pages, start=1):
        assert pdf_string(f"Page {k} of {len(pages)}") in page
        ys = [int(y) for y in re.findall(rb" (-?\d+) Td ", page)]
        assert ys and min(ys) >= 40 and max(ys) <= 800
        if k > 1 and b"(fee " in page:
            assert pdf_string("Amount (EUR)") in page   # the table's head repeated


def test_pdf_long_text_stays_on_the_page() -> None:
    b = a_bill([line("x" * 120, "community", 1, detail="y" * 400), line("p2p_bought", "peers", 2, 1, 1,
                                                                          detail="word " * 200)],
               member="0x" + "ef" * 200)
    pdf = render_pdf(b, community="A very long community name " * 10)
    check_xref(pdf)
    for page in streams(pdf):
        for m in re.finditer(rb"/F(\d) (\d+) Tf ([\d.]+) (\d+) Td ", page):
            text, _ = parse_literal(page[m.end():])
            x = Decimal(m.group(3).decode())
            width = Decimal(text_width(text.decode("cp1252"), int(m.group(2)), m.group(1) == b"2")) / 1000
            assert 50 <= x and x + width <= 545, (x, width, text)


# ---------------------------------------------------------------------------- PDF strings
ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("f"): 12, ord("("): 40, ord(")"): 41,
           ord("\\"): 92}


def parse_literal(data: bytes) -> tuple[bytes, int]:
    """A PDF literal string at the start of ``data``: (its bytes, the length consumed)."""
    assert data[:1] == b"("
    out = bytearray()
    depth, i = 1, 1
    while True:
        c = data[i]
        if c == 92:                                   # backslash
            d = data[i + 1]
            if d in ESCAPES:
                out.append(ESCAPES[d])
                i += 2
            elif 48 <= d <= 55:                       # up to three octal digits
                j = i + 1
                while j < len(data) and j < i + 4 and 48 <= data[j] <= 55:
                    j += 1
                out.append(int(data[i + 1:j], 8) & 0xFF)
                i = j
            elif d in (10, 13):                       # a line continuation
                i += 3 if data[i + 1:i + 3] == b"\r\n" else 2
            else:                                     # an unknown escape: the backslash is ignored
                i += 1
            continue
        if c == 40:
            depth += 1
        elif c == 41:
            depth -= 1
            if depth == 0:
                return bytes(out), i + 1
        elif c == 13:                                  # an unescaped end of line reads as \n
            out.append(10)
            i += 2 if data[i + 1:i + 2] == b"\n" else 1
            continue
        out.append(c)
        i += 1


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_pdf_string_parses_back(text: str) -> None:
    lit = pdf_string(text)
    parsed, used = parse_literal(lit)
    assert used == len(lit)
    assert parsed == winansi(text)
    assert all(32 <= c < 127 for c in lit)
    assert len(winansi(text)) == len(unicodedata.normalize("NFC", text))


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="cp1252", exclude_categories=("Cc",))))
def test_winansi_keeps_what_the_fonts_have(text: str) -> None:
    parsed, _ = parse_literal(pdf_string(text))
    assert parsed.decode("cp1252") == text


def test_winansi_replacements() -> None:
    assert winansi("a\tb\nc\x00d\u4e2d\U0001f600\u20ac") == b"a b c?d??\x80"
    assert winansi("e\u0301") == b"\xe9"                  # NFC first


def test_money_in_answers_is_plain_digits():
    """str(Decimal) wrote a zero line as "0E-8" (and one unit as "1E-8"): parsers of bills choke."""
    assert money_json(0) == {"units": "0", "eur": "0.00000000"}
    assert money_json(1)["eur"] == "0.00000001" and money_json(-1)["eur"] == "-0.00000001"
    assert money_json(123_456_789_012)["eur"] == "1234.56789012"
