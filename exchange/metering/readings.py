"""Meter readings in: the CSV and xlsx upload formats, validated row by row.

Pure (no database): :func:`parse_csv` / :func:`parse_xlsx` turn a file into a
:class:`ParsedReadings` (values per point and UTC day) or a list of precise errors
(line, column, reason); nothing is imported unless the whole file is valid.

The CSV format (docs/metering.md, "Uploading readings"): UTF-8, comma-separated, a header
row, then one row per metering point and interval::

    point_id,interval_start,energy_wh
    NL-0001-import,2026-11-01T00:00:00Z,412
    NL-0001-import,2026-11-01T00:15:00Z,398

- ``point_id``: a registered metering point of this community;
- ``interval_start``: ISO 8601 with a UTC offset (``Z`` or ``+01:00``), on the community's
  interval grid (15 min by default); an optional ``interval_end`` column is checked to be
  exactly one interval later (an interval of another length or one that overlaps the grid
  is refused);
- ``energy_wh``: the energy of the interval, a whole number of Wh, 0 <= value <= 10^9.

The xlsx format has the same columns in its first sheet (header in row 1).
"""

from __future__ import annotations

import csv
import io
import zipfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from openpyxl import load_workbook

from exchange.core.units import US_PER_MIN, iso, to_us
from exchange.protocol.types import EARLIEST, LATEST

MAX_ENERGY_WH = 10**9
MAX_ERRORS = 100
DAY_US = 86_400_000_000
MISSING = -1  # in a day's array: no reading
#: xlsx limits: what the archive may expand to, and how many rows a sheet may have
XLSX_MAX_UNCOMPRESSED = 512 * 1024 * 1024
XLSX_MAX_RATIO = 200
HEADERS = (("point_id", "interval_start", "energy_wh"), ("point_id", "interval_start", "interval_end", "energy_wh"))


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str

    def as_dict(self) -> dict:
        return {"line": self.line, "column": self.column, "reason": self.reason}


class UploadRefused(ValueError):
    """The file is not valid: nothing is imported. ``errors`` are the first
    :data:`MAX_ERRORS`, ``error_count`` counts them all."""

    def __init__(self, errors: list[RowError], error_count: int, message: str = "") -> None:
        super().__init__(message or f"{error_count} error(s); first: line {errors[0].line} "
                                    f"{errors[0].column}: {errors[0].reason}" if errors else message)
        self.errors = errors
        self.error_count = error_count


@dataclass
class ParsedReadings:
    """Valid readings: ``days[(point_id, day_start_us)]`` is an array of ``per_day`` values
    (Wh, :data:`MISSING` where the file has none)."""

    interval_minutes: int
    rows: int = 0
    days: dict[tuple[str, int], array] = field(default_factory=dict)
    first_us: dict[str, int] = field(default_factory=dict)
    last_us: dict[str, int] = field(default_factory=dict)

    @property
    def per_day(self) -> int:
        return 1440 // self.interval_minutes

    def gaps(self) -> dict[str, int]:
        """Missing intervals between each point's first and last reading in the file."""
        step = self.interval_minutes * US_PER_MIN
        out: dict[str, int] = {}
        counts: dict[str, int] = {}
        for (pid, _), values in self.days.items():
            counts[pid] = counts.get(pid, 0) + sum(1 for v in values if v != MISSING)
        for pid, n in counts.items():
            span = (self.last_us[pid] - self.first_us[pid]) // step + 1
            if span != n:
                out[pid] = span - n
        return out


class _Errors:
    def __init__(self) -> None:
        self.items: list[RowError] = []
        self.count = 0

    def add(self, line: int, column: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append(RowError(line, column, reason))


EARLIEST_US, LATEST_US = to_us(EARLIEST), to_us(LATEST)


def parse_time(text: str) -> int:
    if len(text) > 40:
        raise ValueError("too long")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("has no UTC offset (write Z or +01:00)")
    us = to_us(t)
    if not EARLIEST_US <= us < LATEST_US:  # as every time the exchange takes (exchange.protocol.types)
        raise ValueError("out of range: give a time between 2000 and 2200")
    return us


def parse_rows(rows: Iterable[Sequence[Any]], points: set[str], interval_minutes: int, *,
               not_after_us: int | None = None, fast: bool = False) -> ParsedReadings:
    """Validate ``rows`` (the first is the header) into readings; raises :class:`UploadRefused`
    with every problem found (up to :data:`MAX_ERRORS` listed). ``not_after_us``: readings
    of intervals ending later (not yet measured) are refused."""
    step = interval_minutes * US_PER_MIN
    out = ParsedReadings(interval_minutes)
    errors = _Errors()
    it: Iterator[Sequence[Any]] = iter(rows)
    header = next(it, None)
    names = tuple(str(h).strip().lower() if h is not None else "" for h in header) if header is not None else ()
    if names not in HEADERS:
        errors.add(1, "header", f"expected the columns {','.join(HEADERS[0])} (optionally interval_end "
                                f"after interval_start), got {','.join(names)[:200]!r}")
        raise UploadRefused(errors.items, errors.count)
    with_end = len(names) == 4
    width = len(names)
    per_day = 1440 // interval_minutes
    # interval_start as written -> (its UTC day in µs, its index in the day), once validated
    # (the same timestamps repeat for every point)
    times: dict[object, tuple[int, int]] = {}
    days = out.days
    line = 1
    ok = 0
    cur_key: tuple[str, int] | None = None
    cur: array = array("q")
    fast = fast and not with_end
    for row in it:
        line += 1
        # the fast path: a plain CSV row the slow path would accept as it is
        if fast and len(row) == 3:
            pid, ts_raw, e_raw = row
            if pid in points:
                slot = times.get(ts_raw)
                if slot is not None and e_raw.isdigit() and e_raw.isascii() and len(e_raw) <= 9:
                    key = (pid, slot[0])
                    if key != cur_key:
                        got = days.get(key)
                        if got is None:
                            got = days[key] = array("q", [MISSING]) * per_day
                        cur, cur_key = got, key
                    if cur[slot[1]] == MISSING:
                        cur[slot[1]] = int(e_raw)
                        ok += 1
                        continue
        r = _row(tuple(row), line, width, with_end, points, times, step, interval_minutes, not_after_us, errors)
        if r is None:
            continue
        pid, (day_us, i), e = r
        values = days.get((pid, day_us))
        if values is None:
            values = days[(pid, day_us)] = array("q", [MISSING]) * per_day
        if values[i] != MISSING:
            errors.add(line, "interval_start", f"a second reading for {pid[:80]} at {iso(day_us + i * step)}")
            continue
        values[i] = e
        ok += 1
    out.rows = ok
    for (pid, day_us), values in days.items():
        present = [i for i, v in enumerate(values) if v != MISSING]
        if present:
            lo, hi = day_us + present[0] * step, day_us + present[-1] * step
            if pid not in out.first_us or lo < out.first_us[pid]:
                out.first_us[pid] = lo
            if pid not in out.last_us or hi > out.last_us[pid]:
                out.last_us[pid] = hi
    if errors.count:
        raise UploadRefused(errors.items, errors.count)
    if not out.rows:
        raise UploadRefused([RowError(2, "row", "the file has no readings")], 1)
    return out


def _row(cells: tuple[object, ...], line: int, width: int, with_end: bool, points: set[str],
         times: dict[object, tuple[int, int]], step: int, interval_minutes: int, not_after_us: int | None,
         errors: _Errors) -> tuple[str, tuple[int, int], int] | None:
    """Validate one row (every rule, every cell type): ``(point, (day, index), energy)``, or
    None after recording its error (a blank row is skipped silently)."""
    if len(cells) != width:
        if any(c not in (None, "") for c in cells):
            errors.add(line, "row", f"expected {width} columns, got {len(cells)}")
        return None
    pid_raw = cells[0]
    pid = pid_raw.strip() if isinstance(pid_raw, str) else str(pid_raw)
    if pid not in points:
        errors.add(line, "point_id", f"unknown metering point {pid[:80]!r} (register it first)")
        return None
    ts_raw = cells[1]
    slot = times.get(ts_raw)
    if slot is None:
        try:
            t = to_us(ts_raw) if isinstance(ts_raw, datetime) else parse_time(str(ts_raw).strip())
        except (ValueError, OverflowError) as exc:
            errors.add(line, "interval_start", f"not an ISO 8601 time with offset: {str(ts_raw)[:40]!r} ({exc})")
            return None
        if t % step:
            errors.add(line, "interval_start", f"{str(ts_raw)[:40]} is not on the {interval_minutes}-min interval grid")
            return None
        if not_after_us is not None and t + step > not_after_us:
            errors.add(line, "interval_start", f"{str(ts_raw)[:40]}: this interval has not ended yet")
            return None
        day, k = divmod(t, DAY_US)
        slot = times[ts_raw] = (day * DAY_US, k // step)
    if with_end:
        t = slot[0] + slot[1] * step
        try:
            end_raw = cells[2]
            end = to_us(end_raw) if isinstance(end_raw, datetime) else parse_time(str(end_raw).strip())
        except (ValueError, OverflowError) as exc:
            errors.add(line, "interval_end", f"not an ISO 8601 time with offset ({exc})")
            return None
        if end - t != step:
            errors.add(line, "interval_end", f"the interval is {(end - t) // US_PER_MIN} min, not the "
                                             f"community's {interval_minutes} min")
            return None
    e_raw = cells[width - 1]
    if isinstance(e_raw, bool):
        errors.add(line, "energy_wh", "not a whole number of Wh")
        return None
    if isinstance(e_raw, int):
        e = e_raw
    elif isinstance(e_raw, float):  # an xlsx number cell: accepted when it is a whole number
        if not e_raw.is_integer() or abs(e_raw) > 2**53:
            errors.add(line, "energy_wh", f"not a whole number of Wh: {e_raw!r}")
            return None
        e = int(e_raw)
    else:
        s = str(e_raw).strip() if e_raw is not None else ""
        if not (s.isascii() and s.removeprefix("-").isdigit()) or len(s) > 12:  # one sign at most (--5 failed int())
            errors.add(line, "energy_wh", f"not a whole number of Wh: {s[:20]!r}")
            return None
        e = int(s)
    if e < 0:
        errors.add(line, "energy_wh", f"negative energy {e} (import and export are separate points)")
        return None
    if e > MAX_ENERGY_WH:
        errors.add(line, "energy_wh", f"{e} Wh in one interval exceeds the limit of {MAX_ENERGY_WH}")
        return None
    return pid, slot, e


def parse_csv(data: bytes | io.BufferedIOBase, points: set[str], interval_minutes: int, *,
              not_after_us: int | None = None) -> ParsedReadings:
    """A CSV upload (bytes or a binary file) -> readings (:func:`parse_rows`)."""
    raw = io.BytesIO(data) if isinstance(data, bytes) else data
    text = io.TextIOWrapper(cast(Any, raw), encoding="utf-8-sig", newline="")
    try:
        return parse_rows(csv.reader(text, strict=True), points, interval_minutes, not_after_us=not_after_us,
                          fast=True)
    except UnicodeDecodeError as exc:
        raise UploadRefused([RowError(0, "file", f"not UTF-8 text ({exc.reason} at byte {exc.start})")], 1) from None
    except csv.Error as exc:
        raise UploadRefused([RowError(0, "file", f"not valid CSV: {exc}")], 1) from None
    finally:
        text.detach()


def check_xlsx_archive(data: bytes) -> None:
    """Refuse an xlsx that is not a zip archive or that would expand beyond the limits (a zip
    bomb) before any of it is decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            total = 0
            for info in z.infolist():
                total += info.file_size
                if info.compress_size and info.file_size / info.compress_size > XLSX_MAX_RATIO:
                    raise UploadRefused([RowError(0, "file", f"{info.filename} expands {info.file_size} bytes "
                                                             "from far less (refused as a zip bomb)")], 1)
            if total > XLSX_MAX_UNCOMPRESSED:
                raise UploadRefused([RowError(0, "file", f"the workbook expands to {total} bytes "
                                                         f"(limit {XLSX_MAX_UNCOMPRESSED})")], 1)
    except zipfile.BadZipFile:
        raise UploadRefused([RowError(0, "file", "not an xlsx workbook (not a zip archive)")], 1) from None


def parse_xlsx(data: bytes, points: set[str], interval_minutes: int, *,
               not_after_us: int | None = None) -> ParsedReadings:
    """An xlsx upload: the first sheet, same columns as the CSV (cells may be numbers and
    dates; a date cell without a time zone is refused like a CSV time without offset)."""
    check_xlsx_archive(data)
    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a broken workbook
        raise UploadRefused([RowError(0, "file", f"not a readable xlsx workbook: {type(exc).__name__}")], 1) from None
    try:
        if not wb.worksheets:
            raise UploadRefused([RowError(0, "file", "the workbook has no worksheet")], 1)
        ws = wb.worksheets[0]
        return parse_rows(_xlsx_cells(ws.iter_rows(values_only=True)), points, interval_minutes,
                          not_after_us=not_after_us)
    except UploadRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - openpyxl reads the sheet lazily: a broken cell fails here
        raise UploadRefused([RowError(0, "file", f"not a readable xlsx sheet: {type(exc).__name__}: "
                                                 f"{str(exc)[:120]}")], 1) from None
    finally:
        wb.close()


def _xlsx_cells(rows: Iterable[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
    for row in rows:
        cells = list(row)
        while cells and cells[-1] is None:
            cells.pop()
        yield tuple(c if not isinstance(c, datetime) or c.tzinfo is not None else c.isoformat() for c in cells)
