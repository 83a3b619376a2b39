"""A member's bill as a statement: CSV (exact), an HTML page and a PDF (printable). Pure:
each renderer takes the bill as served (the dict of :func:`exchange.metering.service.bill_json`)
and returns text or bytes; nothing here reads or writes anything.

Money: the CSV carries every amount exactly (euros with all 8 decimals of the money
unit, 1e-8 EUR), like the JSON. The HTML page and the PDF are for reading: there each
amount is rounded to the cent, half-even (``Decimal.quantize``), and the total is the
bill's ``total_cents`` (the exact total rounded once), so the rounded lines may differ
from the rounded total by a cent or so; the statement says so and points to the CSV/JSON
for the exact amounts. A positive amount is owed by the member, a negative one is paid
to the member. No floats anywhere: energy (Wh) and prices (ticks, 1e-8 EUR/Wh) are shown
as exact decimals (kWh = Wh / 1000, ct/kWh = ticks / 1000).

The PDF is written by hand (PDF 1.4, no dependency): A4 pages of text in Helvetica and
Helvetica-Bold (base-14 fonts, not embedded) with ``/WinAnsiEncoding`` (Windows-1252),
uncompressed content streams, a classic xref table. Text is NFC-normalised and encoded
to Windows-1252; a character it lacks (and any control character) becomes ``?``,
whitespace controls become a space (:func:`winansi`); :func:`pdf_string` writes the
bytes as a literal string with ``( ) \\`` escaped and every byte outside printable ASCII
as an octal escape, so content streams are plain ASCII."""

from __future__ import annotations

import csv
import html
import io
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

#: Friendly names of the bill lines the metering core writes (other names are shown as
#: they are, underscores as spaces).
LINE_NAMES: dict[str, str] = {
    "p2p_bought": "Energy bought from peers",
    "p2p_sold": "Energy sold to peers",
    "supplier_import": "Energy from your supplier",
    "supplier_export": "Energy fed in to your supplier",
    "imbalance": "Imbalance charge (energy sold, not delivered)",
    "grid_import_fee": "Grid import fee",
    "grid_export_fee": "Grid export fee",
    "taxes_surcharges": "Taxes and surcharges",
    "electricity_tax": "Electricity tax",
    "marketplace_fee": "Marketplace fee",
    "service_fee": "Service fee",
    "assistance_fee": "Assistance fee",
    "fixed_fee": "Fixed monthly fee",
    "contracted_power_fee": "Contracted power fee",
    "flexibility_payout": "Flexibility payout",
    "flexibility_penalty": "Flexibility penalty",
}

PAYEES: dict[str, str] = {"peers": "Peers", "supplier": "Supplier", "community": "Community"}

#: The energy summary: (key of the bill's ``flows``, label), in this order.
ENERGY_ROWS: tuple[tuple[str, str], ...] = (
    ("import_wh", "Imported from the grid (metered)"),
    ("export_wh", "Exported to the grid (metered)"),
    ("bought_wh", "Bought from peers"),
    ("sold_wh", "Sold to peers"),
    ("supplier_import_wh", "From your supplier"),
    ("supplier_export_wh", "Fed in to your supplier"),
)

CSV_HEADER = ("line", "payee", "energy_kwh", "rate_ct_per_kwh", "amount_eur", "detail")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
CENT = Decimal("0.01")
DASH = "\u2014"


def line_label(name: str) -> str:
    """The friendly name of a bill line (unknown names as they are, ``_`` as spaces)."""
    return LINE_NAMES.get(name) or name.replace("_", " ")


# ---------------------------------------------------------------------------- numbers
def _int(value: Any) -> int:
    """An integer field of the bill (money units are strings, energy and ticks ints)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an integer: {value!r}")
    return int(value)


def _units(money: Mapping[str, Any]) -> int:
    return _int(money["units"])


def kwh(wh: int) -> Decimal:
    """Wh as exact kWh."""
    return Decimal(wh).scaleb(-3)


def ct_per_kwh(ticks: int) -> Decimal:
    """Ticks (1e-8 EUR/Wh) as exact ct/kWh."""
    return Decimal(ticks).scaleb(-3)


def eur_exact(units: int) -> Decimal:
    """Money units as exact euros with all 8 decimals."""
    return Decimal(units).scaleb(-8)


def eur_cents(units: int) -> Decimal:
    """Money units as euros rounded to the cent, half-even (display only)."""
    return eur_exact(units).quantize(CENT, rounding=ROUND_HALF_EVEN)


def _plain(d: Decimal) -> str:
    return format(d, "f")


def _shown(d: Decimal) -> str:
    """A decimal for reading: thousands separated, never an exponent, ``-0.00`` as ``0.00``."""
    if d.is_zero():
        d = abs(d)
    return format(d, ",f")


def _money(units: int) -> str:
    c = eur_cents(units)
    return ("-\u20ac" if c < 0 and not c.is_zero() else "\u20ac") + _shown(abs(c))


# ---------------------------------------------------------------------------- period
def _when(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _midnight(t: datetime) -> bool:
    return (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0)


def _day(t: datetime) -> str:
    return f"{t.day} {MONTHS[t.month - 1]} {t.year}"


def period_words(start: str, end: str, tz: tzinfo = UTC) -> str:
    """``[start, end)`` in the community's words (its local time): ``November 2026``,
    ``November 2026 to January 2027``, ``1 November 2026 to 15 November 2026`` (the last
    day included), else both instants to the minute with the zone's name."""
    s, e = _when(start).astimezone(tz), _when(end).astimezone(tz)
    if _midnight(s) and _midnight(e) and e > s:
        if s.day == 1 and e.day == 1:
            months = (e.year - s.year) * 12 + e.month - s.month
            first = f"{MONTHS[s.month - 1]} {s.year}"
            if months == 1:
                return first
            last_month, last_year = (e.month - 2) % 12 + 1, e.year - (1 if e.month == 1 else 0)
            return f"{first} to {MONTHS[last_month - 1]} {last_year}"
        last = (e.replace(tzinfo=None) - timedelta(days=1))
        if last.date() == s.date():
            return _day(s)
        return f"{_day(s)} to {_day(last)}"
    zone = s.tzname() or "UTC"
    return f"{_day(s)} {s:%H:%M} to {_day(e)} {e:%H:%M} ({zone})"


# ---------------------------------------------------------------------------- the statement model
@dataclass(frozen=True, slots=True)
class Row:
    """One bill line as shown: friendly name, counterparty, energy kWh, rate ct/kWh and
    amount EUR (rounded to the cent), the line's detail."""

    name: str
    payee: str
    energy: str
    rate: str
    amount: str
    detail: str


@dataclass(frozen=True, slots=True)
class Statement:
    """What the HTML page and the PDF show (one model: both show the same content)."""

    community: str
    member: str
    period: str
    version: str
    tariff: str
    rows: tuple[Row, ...]
    total: str
    total_label: str
    summary: tuple[tuple[str, str], ...]
    energy: tuple[tuple[str, str], ...]
    estimated: str
    fine_print: tuple[str, ...] = field(default=())


def statement(bill: Mapping[str, Any], *, community: str, tz: tzinfo = UTC) -> Statement:
    """The bill as shown on a statement (amounts rounded to the cent for reading)."""
    rows = []
    for x in bill["lines"]:
        energy, rate = x.get("energy_wh"), x.get("rate_ticks")
        rows.append(Row(line_label(str(x["name"])), PAYEES.get(str(x["payee"]), str(x["payee"])),
                        DASH if energy is None else _shown(kwh(_int(energy))),
                        DASH if rate is None else _shown(ct_per_kwh(_int(rate))),
                        _shown(eur_cents(_units(x["amount"]))), str(x.get("detail") or "")))
    total_cents = _int(bill["total_cents"])
    total = Decimal(total_cents).scaleb(-2)
    savings = _units(bill["savings_units"])
    summary = [("Total for the period", ("-\u20ac" if total_cents < 0 else "\u20ac") + _shown(abs(total))),
               ("What you would have paid with the grid only", _money(_units(bill["grid_only_units"]))),
               ("Your savings" if savings >= 0 else "Your extra cost compared with the grid only",
                _money(abs(savings)))]
    if "community_units" in bill:
        summary.append(("Of which owed to the community (settled on chain)", _money(_units(bill["community_units"]))))
    flows = bill.get("flows") or {}
    energy = tuple((label, _shown(kwh(_int(flows[key]))) + " kWh") for key, label in ENERGY_ROWS if key in flows)
    n = _int(bill.get("estimated_intervals") or 0)
    estimated = (f"Some meter readings were missing and have been estimated: {n} metering "
                 f"interval{'s' if n != 1 else ''} of this period use estimated values." if n > 0 else "")
    version = bill.get("version")
    fine = ["Amounts are in euros, rounded to the cent (half-even) for reading; each line is rounded on its own "
            "and the total is the exact total rounded once, so the lines may not add up to it to the cent. "
            "The exact amounts (to 0.00000001 EUR) are in the CSV and JSON of this bill.",
            "A positive amount is owed by you; a negative amount is paid to you."]
    if bill.get("digest"):
        fine.append(f"Bill digest: {bill['digest']}")
    return Statement(
        community=community, member=str(bill["member"]),
        period=period_words(str(bill["start"]), str(bill["end"]), tz),
        version=str(version) if version is not None else "not yet issued",
        tariff=str(bill.get("tariff") or DASH), rows=tuple(rows), total=summary[0][1], total_label=summary[0][0],
        summary=tuple(summary[1:]), energy=energy, estimated=estimated, fine_print=tuple(fine))


# ---------------------------------------------------------------------------- CSV
def _cell(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(bill: Mapping[str, Any]) -> str:
    """The bill's lines as CSV (RFC 4180, CRLF), exact: one row per line (its name as in the
    JSON), then ``total``, ``grid_only`` and ``savings`` rows. ``energy_kwh`` = Wh / 1000,
    ``rate_ct_per_kwh`` = ticks / 1000, ``amount_eur`` with all 8 decimals; empty when the
    line has none. Text cells starting with ``= + - @`` are prefixed with ``'``."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    for x in bill["lines"]:
        energy, rate = x.get("energy_wh"), x.get("rate_ticks")
        w.writerow((_cell(str(x["name"])), _cell(str(x["payee"])),
                    "" if energy is None else _plain(kwh(_int(energy))),
                    "" if rate is None else _plain(ct_per_kwh(_int(rate))),
                    _plain(eur_exact(_units(x["amount"]))), _cell(str(x.get("detail") or ""))))
    for name, key in (("total", "total_units"), ("grid_only", "grid_only_units"), ("savings", "savings_units")):
        w.writerow((name, "", "", "", _plain(eur_exact(_units(bill[key]))), ""))
    return out.getvalue()


# ---------------------------------------------------------------------------- HTML
CSS = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1b1b1b;
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:54rem;margin:2rem auto;background:#fff;padding:2.5rem 3rem;box-shadow:0 1px 4px rgba(0,0,0,.15)}
header{border-bottom:2px solid #1b1b1b;padding-bottom:1rem;margin-bottom:1.5rem}
h1{font-size:1.6rem;margin:0 0 .2rem}
h2{font-size:1.15rem;margin:0 0 1rem;font-weight:600;color:#333}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
dt{font-weight:600}
dd{margin:0}
code{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
table{width:100%;border-collapse:collapse;margin:0 0 1.75rem}
caption{text-align:left;font-weight:700;font-size:1.05rem;padding:0 0 .5rem}
th,td{padding:.45rem .5rem;border-bottom:1px solid #d4d4d8;text-align:left;vertical-align:top}
thead th{font-size:.85rem;color:#3f3f46;border-bottom:1px solid #1b1b1b}
tbody th{font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.detail{display:block;font-weight:400;font-size:.85em;color:#52525b}
tfoot th,tfoot td{font-weight:700;border-top:2px solid #1b1b1b;border-bottom:none}
.note{background:#fff7db;border-left:4px solid #b7791f;padding:.6rem .9rem;margin:0 0 1.5rem}
.fine{font-size:.8rem;color:#52525b}
.fine p{margin:.3rem 0}
@media print{
@page{size:A4;margin:16mm}
body{background:#fff;font-size:10pt}
main{max-width:none;margin:0;padding:0;box-shadow:none}
thead{display:table-header-group}
tr{break-inside:avoid}
.note{border:1px solid #777;border-left-width:4px}
}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_html(bill: Mapping[str, Any], *, community: str, tz: tzinfo = UTC) -> str:
    """A self-contained printable statement page (inline CSS, no script, no external
    resource; a CSP that forbids both). ``tz`` is the community's time zone (the period is
    said in its local time). Every value is HTML-escaped."""
    s = statement(bill, community=community, tz=tz)
    p: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Energy statement \u2014 {_e(s.community)} \u2014 {_e(s.period)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        f"<h1>{_e(s.community)}</h1>",
        f"<h2>Energy statement for {_e(s.period)}</h2>",
        "<dl>",
        f"<dt>Member</dt><dd><code>{_e(s.member)}</code></dd>",
        f"<dt>Period</dt><dd>{_e(s.period)}</dd>",
        f"<dt>Tariff</dt><dd>{_e(s.tariff)}</dd>",
        f"<dt>Version</dt><dd>{_e(s.version)}</dd>",
        "</dl>",
        "</header>",
    ]
    if s.estimated:
        p.append(f'<p class="note" role="note">{_e(s.estimated)}</p>')
    p += [
        "<table>",
        f"<caption>Your bill for {_e(s.period)}</caption>",
        "<thead><tr>",
        '<th scope="col">Item</th>',
        '<th scope="col">With</th>',
        '<th scope="col" class="num">Energy (kWh)</th>',
        '<th scope="col" class="num">Rate (ct/kWh)</th>',
        '<th scope="col" class="num">Amount (EUR)</th>',
        "</tr></thead>",
        "<tbody>",
    ]
    for r in s.rows:
        detail = f'<span class="detail">{_e(r.detail)}</span>' if r.detail else ""
        p.append(f'<tr><th scope="row">{_e(r.name)}{detail}</th><td>{_e(r.payee)}</td>'
                 f'<td class="num">{_e(r.energy)}</td><td class="num">{_e(r.rate)}</td>'
                 f'<td class="num">{_e(r.amount)}</td></tr>')
    p += [
        "</tbody>",
        f'<tfoot><tr><th scope="row" colspan="4">{_e(s.total_label)}</th>'
        f'<td class="num">{_e(s.total)}</td></tr></tfoot>',
        "</table>",
        "<table>",
        "<caption>Compared with the grid only</caption>",
        "<tbody>",
    ]
    for label, value in s.summary:
        p.append(f'<tr><th scope="row">{_e(label)}</th><td class="num">{_e(value)}</td></tr>')
    p += ["</tbody>", "</table>"]
    if s.energy:
        p += ["<table>", "<caption>Your energy this period</caption>", "<tbody>"]
        for label, value in s.energy:
            p.append(f'<tr><th scope="row">{_e(label)}</th><td class="num">{_e(value)}</td></tr>')
        p += ["</tbody>", "</table>"]
    p.append('<footer class="fine">')
    p += [f"<p>{_e(t)}</p>" for t in s.fine_print]
    p += ["</footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(p)


# ---------------------------------------------------------------------------- PDF text
#: Helvetica advance widths (1/1000 em) of the printable ASCII characters 32..126 (Adobe's
#: metrics); any other character is measured as 1000 (wider than every Helvetica glyph
#: but the ``@``), so wrapped text never overflows. Bold text is measured 20 % wider.
_HELVETICA = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,          # space ! " # ... /
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,          # 0-9 : ; < = > ?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,         # @ A-O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,          # P-Z [ \ ] ^ _
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,          # ` a-o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,               # p-z { | } ~
)
#: A few characters beyond ASCII that numbers and labels use (the same in both fonts).
_MORE = {"\u20ac": 556, "\u2013": 556, "\u2014": 1000}
#: The widths that are the same in Helvetica-Bold (numbers are right-aligned exactly).
_SAME_IN_BOLD = frozenset("0123456789.,-+ \u20ac\u2013\u2014")


def winansi(text: str) -> bytes:
    """``text`` in the fonts' encoding (WinAnsiEncoding = Windows-1252), NFC-normalised:
    whitespace controls become a space, other controls and characters it lacks ``?``."""
    out = bytearray()
    for ch in unicodedata.normalize("NFC", text):
        if ch in "\t\n\r\v\f\x85\u2028\u2029":
            out += b" "
            continue
        try:
            b = ch.encode("cp1252")
        except UnicodeEncodeError:
            b = b"?"
        out += b"?" if b[0] < 0x20 or b[0] == 0x7F else b
    return bytes(out)


def pdf_string(text: str) -> bytes:
    """``text`` as a PDF literal string: ``( ) \\`` escaped, every byte outside printable
    ASCII as a three-digit octal escape."""
    out = bytearray(b"(")
    for b in winansi(text):
        if b in b"()\\":
            out += b"\\" + bytes((b,))
        elif 0x20 <= b < 0x7F:
            out.append(b)
        else:
            out += b"\\%03o" % b
    out += b")"
    return bytes(out)


def text_width(text: str, size: int, bold: bool = False) -> int:
    """The width of ``text`` at ``size`` pt, in 1/1000 pt (an upper bound for bold)."""
    total = 0
    for ch in text:
        w = _HELVETICA[ord(ch) - 32] if 32 <= ord(ch) < 127 else _MORE.get(ch, 1000)
        if bold and ch not in _SAME_IN_BOLD:
            w = w * 6 // 5 + 1
        total += w
    return total * size


def wrap(text: str, size: int, width_pt: int, bold: bool = False) -> list[str]:
    """``text`` in lines of at most ``width_pt`` (greedy on spaces; a word too long is cut)."""
    limit = width_pt * 1000
    lines: list[str] = []
    cur = ""
    for word in text.split():
        while text_width(word, size, bold) > limit:
            n = 1
            while n < len(word) and text_width(word[:n + 1], size, bold) <= limit:
                n += 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:n])
            word = word[n:]
        cand = f"{cur} {word}" if cur else word
        if text_width(cand, size, bold) <= limit:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    if cur or not lines:
        lines.append(cur)
    return lines


# ---------------------------------------------------------------------------- PDF layout
PAGE_W, PAGE_H = 595, 842          # A4 in pt (the MediaBox says 595.28 x 841.89)
LEFT, RIGHT, TOP, BOTTOM = 50, 545, 792, 64
COL_NAME_W = 168                    # the item column, from LEFT
COL_PAYEE = 224
COL_ENERGY, COL_RATE, COL_AMOUNT = 370, 450, RIGHT   # right edges of the numbers


@dataclass(frozen=True, slots=True)
class _Text:
    x: int            # 1/1000 pt
    dy: int           # baseline, pt below the block's top
    text: str
    size: int = 9
    bold: bool = False
    grey: bool = False


@dataclass(frozen=True, slots=True)
class _Rule:
    dy: int
    heavy: bool = False


@dataclass(frozen=True, slots=True)
class _Block:
    height: int
    items: tuple[_Text | _Rule, ...]
    in_table: bool = False     # a line of the bill table: a page break repeats the table's head
    keep_next: bool = False    # on the same page as the next block (a heading, a table's head)


def _left(x_pt: int, dy: int, text: str, size: int = 9, bold: bool = False, grey: bool = False) -> _Text:
    return _Text(x_pt * 1000, dy, text, size, bold, grey)


def _right(edge_pt: int, dy: int, text: str, size: int = 9, bold: bool = False, grey: bool = False) -> _Text:
    return _Text(edge_pt * 1000 - text_width(text, size, bold), dy, text, size, bold, grey)


def _paragraph(text: str, size: int, *, bold: bool = False, grey: bool = False, indent: int = 0,
               gap: int = 4, heading: bool = False) -> list[_Block]:
    lead = size + size // 3 + 1
    lines = wrap(text, size, RIGHT - LEFT - indent, bold)
    blocks = [_Block(lead, (_left(LEFT + indent, size, t, size, bold, grey),), keep_next=heading) for t in lines]
    return blocks + [_Block(gap, (), keep_next=heading)]


def _table_head() -> _Block:
    dy = 10
    return _Block(18, (
        _left(LEFT, dy, "Item", 8, grey=True), _left(COL_PAYEE, dy, "With", 8, grey=True),
        _right(COL_ENERGY, dy, "Energy (kWh)", 8, grey=True), _right(COL_RATE, dy, "Rate (ct/kWh)", 8, grey=True),
        _right(COL_AMOUNT, dy, "Amount (EUR)", 8, grey=True), _Rule(15)), keep_next=True)


def _blocks(s: Statement) -> list[_Block]:
    b: list[_Block] = []
    b += _paragraph(s.community, 16, bold=True, gap=2)
    b += _paragraph(f"Energy statement for {s.period}", 11, gap=8)
    for label, value in (("Member", s.member), ("Period", s.period), ("Tariff", s.tariff), ("Version", s.version)):
        lines = wrap(value, 9, RIGHT - LEFT - 70)
        for i, t in enumerate(lines):
            items: tuple[_Text, ...] = (_left(LEFT + 70, 9, t),)
            if i == 0:
                items = (_left(LEFT, 9, label, bold=True), *items)
            b.append(_Block(13, items))
    b.append(_Block(8, (_Rule(4, heavy=True),)))
    b.append(_Block(8, ()))
    if s.estimated:
        b += _paragraph(s.estimated, 9, bold=True, gap=8)
    b += _paragraph(f"Your bill for {s.period}", 11, bold=True, gap=2, heading=True)
    b.append(_table_head())
    for r in s.rows:
        names = wrap(r.name, 9, COL_NAME_W)
        items2: list[_Text | _Rule] = [_left(LEFT, 11 + 11 * i, t) for i, t in enumerate(names)]
        items2 += [_left(COL_PAYEE, 11, r.payee), _right(COL_ENERGY, 11, r.energy), _right(COL_RATE, 11, r.rate),
                   _right(COL_AMOUNT, 11, r.amount)]
        dy = 11 * len(names)
        for t in wrap(r.detail, 7, RIGHT - LEFT - 10) if r.detail else []:
            dy += 9
            items2.append(_left(LEFT + 10, dy, t, 7, grey=True))
        items2.append(_Rule(dy + 5))
        b.append(_Block(dy + 5, tuple(items2), in_table=True))
    b.append(_Block(20, (_Rule(2, heavy=True), _left(LEFT, 15, s.total_label, 10, bold=True),
                         _right(COL_AMOUNT, 15, s.total, 10, bold=True))))
    b.append(_Block(12, ()))
    b += _paragraph("Compared with the grid only", 11, bold=True, gap=2, heading=True)
    for label, value in s.summary:
        b.append(_Block(14, (_left(LEFT, 10, label), _right(COL_AMOUNT, 10, value))))
    b.append(_Block(12, ()))
    if s.energy:
        b += _paragraph("Your energy this period", 11, bold=True, gap=2, heading=True)
        for label, value in s.energy:
            b.append(_Block(14, (_left(LEFT, 10, label), _right(COL_AMOUNT, 10, value))))
        b.append(_Block(12, ()))
    for t in s.fine_print:
        b += _paragraph(t, 7, grey=True, gap=3)
    return b


def _paginate(blocks: Sequence[_Block]) -> list[list[tuple[int, _Block]]]:
    """Blocks placed on pages: (top y in pt, block); a block never straddles pages."""
    pages: list[list[tuple[int, _Block]]] = [[]]
    y = TOP
    for i, blk in enumerate(blocks):
        need, j = blk.height, i
        while blocks[j].keep_next and j + 1 < len(blocks):
            j += 1
            need += blocks[j].height
        if y - need < BOTTOM and pages[-1]:
            pages.append([])
            y = TOP
            if not blk.items:       # spacing at the top of a page is dropped
                continue
            if blk.in_table:
                head = _table_head()
                pages[-1].append((y, head))
                y -= head.height
        pages[-1].append((y, blk))
        y -= blk.height
    return pages


def _num(milli: int) -> bytes:
    return _plain(Decimal(milli).scaleb(-3).normalize()).encode()


def _content(placed: Iterable[tuple[int, _Block]], footer: Sequence[_Text]) -> bytes:
    ops: list[bytes] = []
    texts: list[tuple[int, _Text]] = []
    for top, blk in placed:
        for it in blk.items:
            if isinstance(it, _Rule):
                ops.append(b"%s G %s w %d %d m %d %d l S" % (b"0" if it.heavy else b"0.7", b"1" if it.heavy else b"0.5",
                                                             LEFT, top - it.dy, RIGHT, top - it.dy))
            else:
                texts.append((top, it))
    texts += [(BOTTOM - 20, t) for t in footer]
    for top, t in texts:
        ops.append(b"BT %s g /%s %d Tf %s %d Td %s Tj ET" % (b"0.35" if t.grey else b"0", b"F2" if t.bold else b"F1",
                                                           t.size, _num(t.x), top - t.dy, pdf_string(t.text)))
    return b"\n".join(ops) + b"\n"


def _utf16(text: str) -> bytes:
    """A text string of the document information dictionary (UTF-16BE with a BOM, hex)."""
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode() + b">"


def render_pdf(bill: Mapping[str, Any], *, community: str, tz: tzinfo = UTC) -> bytes:
    """The statement as a PDF 1.4 document (A4 pages, the content of :func:`render_html`)."""
    s = statement(bill, community=community, tz=tz)
    pages = _paginate(_blocks(s))
    objects: list[bytes] = []          # object n is objects[n - 1]
    n_pages = len(pages)
    kids = b" ".join(b"%d 0 R" % (6 + 2 * i) for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n_pages))
    for font in (b"Helvetica", b"Helvetica-Bold"):
        objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % font)
    objects.append(b"<< /Title %s /Subject %s /Producer (Voltbourse) >>" % (
        _utf16(f"Energy statement \u2014 {community} \u2014 {s.period}"), _utf16(s.member)))
    for i, placed in enumerate(pages):
        page_no = f"Page {i + 1} of {n_pages}"
        about = wrap(f"{s.community} \u2014 {s.member} \u2014 {s.period}", 7,
                     RIGHT - LEFT - 20 - text_width(page_no, 7) // 1000)
        footer = (_left(LEFT, 0, about[0] + (" \u2026" if len(about) > 1 else ""), 7, grey=True),
                  _right(RIGHT, 0, page_no, 7, grey=True))
        stream = _content(placed, footer)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595.28 841.89] "
                       b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>" % (7 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


__all__ = ["LINE_NAMES", "line_label", "pdf_string", "period_words", "render_csv", "render_html", "render_pdf",
           "statement", "winansi"]
