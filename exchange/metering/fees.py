"""Tariffs and fees as data: the operator's input (in the units people write: ct/kWh,
EUR per month, percent, as exact decimal strings) and its stored form (integers: ticks of
1e-8 EUR/Wh, money units of 1e-8 EUR, basis points). Converting never rounds: a value
that is not a whole number of the stored unit is refused with the reason."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from exchange.metering.core.model import Basis, FeeSchedule, Payee, PeriodicFee, PerKwhFee
from exchange.metering.readings import RowError, UploadRefused, parse_time
from exchange.protocol.types import UtcTime

#: 1 ct/kWh = 1e-5 EUR/Wh = 1 000 ticks of 1e-8 EUR/Wh
TICKS_PER_CT_PER_KWH = 1_000
UNITS_PER_EUR = 100_000_000

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
_DECIMAL = r"-?[0-9]{1,9}(\.[0-9]{1,8})?"
DecimalText = Annotated[str, StringConstraints(pattern=f"^{_DECIMAL}$")]


def exact(text: str, scale: int, what: str, *, minimum: int = 0) -> int:
    """``text`` (a decimal written as the JSON routes take it: digits, at most 8 decimals, no
    exponent) times ``scale``, which must be a whole number >= ``minimum``."""
    if re.fullmatch(_DECIMAL, text) is None:  # also keeps out Infinity, NaN and 1e400 (a CSV's cells)
        raise ValueError(f"{what}: {text[:40]!r} is not a decimal number (e.g. 12.5: at most 9 digits and "
                         "8 decimals, no exponent)")
    try:
        d = Decimal(text) * scale
    except InvalidOperation:
        raise ValueError(f"{what}: {text!r} is not a decimal number") from None
    if d != d.to_integral_value():
        raise ValueError(f"{what}: {text} is finer than the smallest unit (1/{scale})")
    if d < minimum:
        raise ValueError(f"{what}: {text} is below {minimum}")
    return int(d)


class PerKwhFeeIn(BaseModel):
    """A fee per kWh on an energy basis (see docs/metering.md, "Fees")."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name
    ct_per_kwh: DecimalText = Field(description="ct/kWh, a decimal string, at most 3 decimals (0.001 ct = 1 tick)")
    basis: Literal["import", "export", "supplier_import", "p2p_traded", "p2p_bought", "p2p_sold"]
    payee: Literal["community", "supplier"] = "supplier"
    community_reduction_pct: DecimalText = Field(
        "0", description="percent off for energy traded inside the community (import/export bases), 0-100")


class PeriodicFeeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name
    eur_per_month: DecimalText = Field(description="EUR per month (per kW with per_kw), prorated by time")
    payee: Literal["community", "supplier"] = "community"
    per_kw: bool = False


class FeeScheduleIn(BaseModel):
    """The community's fee schedule from ``effective_from`` on (the schedule in force at the
    start of a billing period applies to the whole period)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    effective_from: UtcTime
    per_kwh: list[PerKwhFeeIn] = Field(default_factory=list, max_length=50)
    periodic: list[PeriodicFeeIn] = Field(default_factory=list, max_length=50)
    imbalance_ct_per_kwh: DecimalText | None = None

    @field_validator("periodic")
    @classmethod
    def _unique(cls, v: list[PeriodicFeeIn], info: Any) -> list[PeriodicFeeIn]:
        names = [f.name for f in info.data.get("per_kwh", [])] + [f.name for f in v]
        if len(names) != len(set(names)):
            raise ValueError("fee names must be unique")
        return v

    def schedule(self) -> FeeSchedule:
        return FeeSchedule(
            per_kwh=tuple(PerKwhFee(f.name, exact(f.ct_per_kwh, TICKS_PER_CT_PER_KWH, f.name), Basis(f.basis),
                                    Payee(f.payee), _pct_bp(f.community_reduction_pct, f.name))
                          for f in self.per_kwh),
            periodic=tuple(PeriodicFee(f.name, exact(f.eur_per_month, UNITS_PER_EUR, f.name), Payee(f.payee),
                                       f.per_kw) for f in self.periodic),
            imbalance_ticks=(None if self.imbalance_ct_per_kwh is None
                             else exact(self.imbalance_ct_per_kwh, TICKS_PER_CT_PER_KWH, "imbalance_ct_per_kwh")))


def _pct_bp(text: str, what: str) -> int:
    bp = exact(text, 100, f"{what} community_reduction_pct")
    if bp > 10_000:
        raise ValueError(f"{what}: community_reduction_pct above 100")
    return bp


def schedule_json(s: FeeSchedule) -> dict[str, Any]:
    """The stored form (integers)."""
    return {"per_kwh": [{"name": f.name, "ticks": f.ticks, "basis": f.basis.value, "payee": f.payee.value,
                         "community_reduction_bp": f.community_reduction_bp} for f in s.per_kwh],
            "periodic": [{"name": f.name, "units_per_month": f.units_per_month, "payee": f.payee.value,
                          "per_kw": f.per_kw} for f in s.periodic],
            "imbalance_ticks": s.imbalance_ticks}


def schedule_from_json(d: dict[str, Any]) -> FeeSchedule:
    return FeeSchedule(
        per_kwh=tuple(PerKwhFee(f["name"], int(f["ticks"]), Basis(f["basis"]), Payee(f["payee"]),
                                int(f["community_reduction_bp"])) for f in d.get("per_kwh", [])),
        periodic=tuple(PeriodicFee(f["name"], int(f["units_per_month"]), Payee(f["payee"]), bool(f["per_kw"]))
                       for f in d.get("periodic", [])),
        imbalance_ticks=None if d.get("imbalance_ticks") is None else int(d["imbalance_ticks"]))


def schedule_view(d: dict[str, Any]) -> dict[str, Any]:
    """The stored form shown back in the operator's units."""
    s = schedule_from_json(d)
    return {"per_kwh": [{"name": f.name, "ct_per_kwh": str(Decimal(f.ticks) / TICKS_PER_CT_PER_KWH),
                         "basis": f.basis.value, "payee": f.payee.value,
                         "community_reduction_pct": str(Decimal(f.community_reduction_bp) / 100)} for f in s.per_kwh],
            "periodic": [{"name": f.name, "eur_per_month": str(Decimal(f.units_per_month) / UNITS_PER_EUR),
                          "payee": f.payee.value, "per_kw": f.per_kw} for f in s.periodic],
            "imbalance_ct_per_kwh": None if s.imbalance_ticks is None
            else str(Decimal(s.imbalance_ticks) / TICKS_PER_CT_PER_KWH)}


# --------------------------------------------------------------------------- tariff prices

TARIFF_HEADER = ("valid_from", "import_ct_per_kwh", "feed_in_ct_per_kwh")
MAX_TARIFF_ROWS = 200_000


def parse_tariff_csv(data: bytes) -> list[tuple[int, int, int]]:
    """A tariff's prices as CSV: ``valid_from,import_ct_per_kwh,feed_in_ct_per_kwh`` (a price
    holds from its time until the next one; hourly or 15-min rows, or any other step)."""
    rows = _tariff_rows(data)
    return parse_tariff_rows(rows)


def _tariff_rows(data: bytes) -> list[list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadRefused([RowError(0, "file", f"not UTF-8 text ({exc.reason})")], 1) from None
    try:
        return list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise UploadRefused([RowError(0, "file", f"not valid CSV: {exc}")], 1) from None


def parse_tariff_rows(rows: list[list[str]]) -> list[tuple[int, int, int]]:
    errors: list[RowError] = []
    if not rows or tuple(c.strip().lower() for c in rows[0]) != TARIFF_HEADER:
        raise UploadRefused([RowError(1, "header", f"expected the columns {','.join(TARIFF_HEADER)}")], 1)
    if len(rows) - 1 > MAX_TARIFF_ROWS:
        raise UploadRefused([RowError(0, "file", f"more than {MAX_TARIFF_ROWS} prices")], 1)
    out: list[tuple[int, int, int]] = []
    seen: set[int] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 3:
            errors.append(RowError(n, "row", f"expected 3 columns, got {len(row)}"))
            continue
        try:
            t = parse_time(row[0].strip())
        except ValueError as exc:
            errors.append(RowError(n, "valid_from", f"not an ISO 8601 time with offset ({exc})"))
            continue
        if t in seen:
            errors.append(RowError(n, "valid_from", "a second price for the same time"))
            continue
        seen.add(t)
        prices = []
        for col, text in zip(TARIFF_HEADER[1:], row[1:], strict=True):
            try:
                prices.append(exact(text.strip(), TICKS_PER_CT_PER_KWH, col))
            except ValueError as exc:
                errors.append(RowError(n, col, str(exc)))
        if len(prices) == 2:
            out.append((t, prices[0], prices[1]))
    if errors:
        raise UploadRefused(errors[:100], len(errors))
    return sorted(out)
