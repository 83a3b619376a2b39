from __future__ import annotations

import json
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.paths import ROOT

from exchange.runtime.config import ConfigFileError, Settings, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VOLTBOURSE_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.database_url is None
    assert s.host == "127.0.0.1" and s.port == 8080
    assert s.clock == "real" and s.sim_speed == 1 and s.sim_start is None
    assert s.market_id == "community" and s.timezone == "Europe/Amsterdam"
    assert s.product_minutes == 60 and s.gate == "day_ahead"
    assert s.gate_day_ahead_local_time == time(12, 0)
    assert (s.price_min_ticks, s.price_max_ticks) == (-50_000, 400_000)
    assert s.self_trade_prevention == "cancel_newest" and s.mechanism == "continuous"
    assert s.journal_max_batch == 2000 and s.journal_pool_size == 4
    # the default data dir is the per-user one, outside the checkout
    checkout = ROOT
    assert not s.data_dir.resolve().is_relative_to(checkout)
    assert s.data_dir.name == "voltbourse"


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTBOURSE_PORT", "9123")
    monkeypatch.setenv("VOLTBOURSE_PRODUCT_MINUTES", "15")
    monkeypatch.setenv("VOLTBOURSE_OPERATOR_TOKEN", "s3cret")
    monkeypatch.setenv("VOLTBOURSE_RISK_CHECKS", "false")
    monkeypatch.setenv("PORT", "1")  # unprefixed: ignored
    s = load_settings()
    assert s.port == 9123
    assert s.product_minutes == 15
    assert s.operator_token is not None and s.operator_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.risk_checks is False


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTBOURSE_PORT", "9123")
    assert load_settings(port=9999).port == 9999


def test_toml_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "voltbourse.toml"
    cfg.write_text(
        'market_id = "dorpsstraat"\n'
        "port = 7000\n"
        'gate = "rolling"\n'
        "gate_rolling_minutes = 30\n"
        'clock = "sim"\n'
        "sim_start = 2025-03-30T00:00:00+01:00\n"
    )
    monkeypatch.setenv("VOLTBOURSE_CONFIG", str(cfg))
    monkeypatch.setenv("VOLTBOURSE_PORT", "7001")  # env overrides the file
    s = load_settings()
    assert s.market_id == "dorpsstraat"
    assert s.port == 7001
    assert s.gate == "rolling" and s.gate_rolling_minutes == 30
    assert s.sim_start == datetime(2025, 3, 29, 23, 0, tzinfo=UTC)


def test_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "voltbourse.json"
    cfg.write_text(json.dumps({"mechanism": "call", "product_minutes": 30, "timezone": "UTC"}))
    monkeypatch.setenv("VOLTBOURSE_CONFIG", str(cfg))
    s = load_settings()
    assert (s.mechanism, s.product_minutes, s.timezone) == ("call", 30, "UTC")


def test_config_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTBOURSE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigFileError, match="no such file"):
        load_settings()
    yaml = tmp_path / "c.yaml"
    yaml.write_text("port: 1\n")
    monkeypatch.setenv("VOLTBOURSE_CONFIG", str(yaml))
    with pytest.raises(ConfigFileError, match=".toml or .json"):
        load_settings()
    typo = tmp_path / "typo.toml"
    typo.write_text("prot = 1\n")
    monkeypatch.setenv("VOLTBOURSE_CONFIG", str(typo))
    with pytest.raises(ValidationError, match="prot"):
        load_settings()


def test_sim_start_naive_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        load_settings(sim_start="2025-06-01T00:00:00")
    with pytest.raises(ValidationError, match="timezone-aware"):
        Settings(sim_start=datetime(2025, 6, 1))


def test_sim_start_converted_to_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTBOURSE_SIM_START", "2025-06-01T00:00:00+02:00")
    s = load_settings()
    assert s.sim_start == datetime(2025, 5, 31, 22, 0, tzinfo=UTC)
    assert s.sim_start.utcoffset().total_seconds() == 0


def test_bad_timezone_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown timezone"):
        load_settings(timezone="Europe/Atlantis")
    assert load_settings(timezone="America/New_York").tz.key == "America/New_York"


@pytest.mark.parametrize(
    "overrides",
    [
        {"product_minutes": 20},
        {"sim_speed": 0},
        {"clock": "wall"},
        {"price_min_ticks": 10, "price_max_ticks": 10},
        {"min_quantity_wh": 0},
        {"self_trade_prevention": "nope"},
        {"gate": "day_ahead", "open_days_before": 0},
        {"no_such_field": 1},
        {"journal_pool_size": 2},  # the lock's and a commit's connections would leave none to spare
    ],
)
def test_invalid_values_rejected(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        load_settings(**overrides)


def test_data_dir_inside_checkout_rejected(tmp_path: Path) -> None:
    checkout = ROOT
    with pytest.raises(ValidationError, match="inside the source checkout"):
        load_settings(data_dir=checkout / "data")
    assert load_settings(data_dir=tmp_path).data_dir == tmp_path
