"""The exchange's time format: :func:`iso` is exactly the ISO 8601 text of
:func:`from_us` with ``Z`` for ``+00:00`` (the fraction only when it is not zero)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.core.units import UTC, from_us, iso, iso_dt

pytestmark = pytest.mark.unit

# 0001-01-01 .. 9999-12-31, the range of datetime
_MIN_US = int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
_MAX_US = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
               - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + 999_999


def _reference(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


@given(st.integers(min_value=_MIN_US, max_value=_MAX_US))
def test_iso_is_the_isoformat_of_the_instant(us: int) -> None:
    assert iso(us) == _reference(us)


@given(st.integers(min_value=_MIN_US // 1_000_000, max_value=_MAX_US // 1_000_000),
       st.sampled_from([0, 1, 999_999, 500_000]))
def test_iso_whole_seconds_and_fractions(s: int, f: int) -> None:
    us = s * 1_000_000 + f
    assert iso(us) == _reference(us)
    assert iso(us).endswith("Z")
    assert ("." in iso(us)) == (f != 0)


def test_iso_out_of_range_fails_as_datetime_does() -> None:
    for us in (_MIN_US - 1, _MAX_US + 1):
        with pytest.raises(OverflowError):
            _reference(us)
        with pytest.raises(OverflowError):
            iso(us)


def test_iso_edges() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(-1) == "1969-12-31T23:59:59.999999Z"
    assert iso(1) == "1970-01-01T00:00:00.000001Z"
    assert iso(1_795_740_279_266_946) == "2026-11-27T00:44:39.266946Z"
    assert iso_dt(from_us(1_795_740_279_000_000)) == iso(1_795_740_279_000_000) == "2026-11-27T00:44:39Z"
