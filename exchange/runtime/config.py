"""Voltbourse configuration.

Pure configuration: importing this module has no side effects (no directories
are created, no files read). Values come from, highest priority first:

1. keyword arguments (``load_settings(port=9000)``),
2. environment variables ``VOLTBOURSE_<FIELD>`` (e.g. ``VOLTBOURSE_PORT=9000``;
   nested values, should any appear, use ``__`` as delimiter),
3. an optional config file named by ``VOLTBOURSE_CONFIG`` (``.toml`` or
   ``.json``, top-level keys are the field names),
4. the defaults below.

Units follow docs/ARCHITECTURE: prices in integer ticks of 0.01 EUR/MWh,
energy in integer Wh, times timezone-aware and normalised to UTC.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["CONFIG_ENV_VAR", "ConfigFileError", "Settings", "default_data_dir", "load_settings"]

#: Environment variable naming an optional .toml / .json config file.
CONFIG_ENV_VAR = "VOLTBOURSE_CONFIG"

# The source checkout (if we run from one): the data dir must not live inside it,
# because the embedded PostgreSQL (as root) chowns its data directory and widens
# the permissions of every parent directory.
_CHECKOUT = Path(__file__).resolve().parents[2]


class ConfigFileError(ValueError):
    """The file named by VOLTBOURSE_CONFIG is missing or of an unknown type."""


def default_data_dir() -> Path:
    """Per-user data directory (e.g. ~/.local/share/voltbourse); never created here."""
    return platformdirs.user_data_path("voltbourse")


def _config_file_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource | None:
    raw = os.environ.get(CONFIG_ENV_VAR)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigFileError(f"{CONFIG_ENV_VAR}={raw!r}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if suffix == ".json":
        return JsonConfigSettingsSource(settings_cls, json_file=path)
    raise ConfigFileError(f"{CONFIG_ENV_VAR}={raw!r}: expected a .toml or .json file")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOLTBOURSE_",
        env_nested_delimiter="__",
        extra="forbid",  # typos in a config file or in keyword overrides are errors
        validate_default=True,
        allow_inf_nan=False,  # every duration is finite (JSON, where settings are stored, has no infinity)
    )

    # --- storage -------------------------------------------------------------
    #: asyncpg-style DSN (postgresql://...). None: start the embedded PostgreSQL.
    database_url: str | None = None
    #: Where the embedded PostgreSQL and other local state live (outside the checkout).
    data_dir: Path = Field(default_factory=default_data_dir)

    # --- HTTP gateway --------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    operator_token: SecretStr | None = None

    # --- clock ---------------------------------------------------------------
    clock: Literal["real", "sim"] = "real"
    #: simulated seconds per wall-clock second (sim clock only)
    sim_speed: int = Field(1, ge=1)
    #: start instant of the simulated clock (tz-aware; stored as UTC). None: now.
    sim_start: datetime | None = None

    # --- market design -------------------------------------------------------
    market_id: str = Field("community", min_length=1)
    #: IANA timezone of the community; delivery days are local days.
    timezone: str = "Europe/Amsterdam"
    product_minutes: Literal[15, 30, 60] = 60
    gate: Literal["day_ahead", "rolling"] = "day_ahead"
    #: day-ahead gate: all products of day D close at D-1 at this local time
    gate_day_ahead_local_time: time = time(12, 0)
    #: rolling gate: a product closes this many minutes before its delivery start
    gate_rolling_minutes: int = Field(60, ge=0, le=7 * 24 * 60)
    #: products of day D open at local midnight of D - open_days_before
    open_days_before: int = Field(1, ge=0, le=30)
    #: price bounds in ticks of 0.01 EUR/MWh (defaults: -500.00 .. 4000.00 EUR/MWh)
    price_min_ticks: int = -50_000
    price_max_ticks: int = 400_000
    min_quantity_wh: int = Field(1, ge=1)
    self_trade_prevention: Literal["cancel_newest", "cancel_oldest", "cancel_both", "allow"] = "cancel_newest"
    #: continuous double auction; call (uniform-price auction at gate closure); or
    #: call_then_continuous: a day-ahead auction at D-1 gate_day_ahead_local_time, then
    #: continuous intraday trading until the rolling gate (needs gate = rolling)
    mechanism: Literal["continuous", "call", "call_then_continuous"] = "continuous"
    risk_checks: bool = True
    # Pre-trade price controls (exchange/core/controls.py, docs/engine.md); 0 turns one off.
    #: dynamic price band around the product's last trade price: basis points of |price|,
    #: at least price_band_min_ticks (a buy above / sell below the band is refused)
    price_band_bp: int = Field(5000, ge=0)
    # at least 250 EUR/MWh: a community's whole corridor between feed-in and retail tariffs
    # (e.g. 80 .. 300 EUR/MWh) stays inside the band from any price in it
    price_band_min_ticks: int = Field(25_000, ge=0)
    #: largest order value, quantity x |price|, in whole euros (fat-finger limit)
    max_order_value_eur: int = Field(50_000, ge=0)
    #: volatility interruption: a trade further than this from the last trade price stops
    #: continuous trading of the product for volatility_auction_s, then a call auction reopens it
    volatility_bp: int = Field(3000, ge=0)
    volatility_min_ticks: int = Field(10_000, ge=0)
    volatility_auction_s: int = Field(30, ge=1)
    #: order-to-trade ratio per member and product: entries allowed per fill (0: off), after otr_free
    otr_max: int = Field(0, ge=0)
    otr_free: int = Field(200, ge=0)

    # --- journal -------------------------------------------------------------
    #: a snapshot of the engine every this many journal commands (0: none written), or after
    #: snapshot_interval_s when there are new commands; recovery replays only what follows
    #: the newest valid snapshot (docs/architecture.md, "Snapshots")
    snapshot_every_commands: int = Field(100_000, ge=0)
    snapshot_interval_s: float = Field(3600.0, gt=0)
    #: recover from snapshots (false: replay the whole journal, as `snapshots verify` does)
    snapshot_recovery: bool = True
    journal_max_batch: int = Field(2000, ge=1)
    #: the journal writer's pool: at least the markets' lock connection, a commit's own and one
    #: to spare (`serve` adds the lock's and one per group-commit transaction slot to it)
    journal_pool_size: int = Field(4, ge=3)
    #: connections of the readers' pool (member and operator reads, the operator feed): reads never
    #: queue behind the journal writer's commits
    read_pool_size: int = Field(4, ge=1)

    #: the origin browsers use to reach this exchange (e.g. https://exchange.example.org): the
    #: operator page refuses state-changing requests from any other origin. Unset: the origin
    #: must name the Host the request was sent to (fine for a local deployment only)
    public_origin: str | None = None

    # --- peer WebSocket API --------------------------------------------------
    #: seconds between WebSocket pings; a peer that does not answer is disconnected
    ws_heartbeat_s: float = Field(20.0, gt=0)
    #: largest accepted frame; a bigger one closes the connection (1009)
    ws_max_message_bytes: int = Field(16_384, ge=1024)
    #: messages queued to a peer before it counts as a slow consumer and is dropped (1013)
    ws_send_queue: int = Field(4096, ge=16)
    #: bytes queued to a peer before it counts as a slow consumer and is dropped (1013)
    ws_send_queue_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    #: open sessions one member may hold at once (more logins are refused: TOO_MANY_SESSIONS)
    ws_sessions_per_member: int = Field(8, ge=1)
    #: open WebSocket connections per client IP address (more are refused with HTTP 429)
    ws_connections_per_ip: int = Field(64, ge=1)
    #: connections not logged in yet, over all clients (more are refused with HTTP 503)
    ws_anonymous_max: int = Field(1024, ge=1)
    #: seconds a new connection has to log in before it is closed (1008)
    ws_login_timeout_s: float = Field(30.0, gt=0)
    #: per-connection rate limit: sustained messages/s and burst
    ws_rate_per_s: float = Field(500.0, gt=0)
    ws_burst: int = Field(1000, ge=1)
    #: show counterparties in execution reports and trade lists (default: anonymous)
    disclose_counterparty: bool = False
    #: chain id of the EIP-712 domain of signed orders
    chain_id: int = Field(1337, ge=1)

    # --- settlement (settlement/, docs/settlement.md) --------------------------
    #: anchor and settle trades on chain; the chain then owns members' collateral
    settlement_enabled: bool = True
    #: where the settlement worker runs: "child" (a `voltbourse settle` process that `serve` starts,
    #: supervises and stops), "external" (the operator runs `voltbourse settle` on its own against
    #: the same database), "inline" (a task in the exchange's process, as before: tests, the demo)
    settlement_process: Literal["child", "external", "inline"] = "child"
    #: the settlement process's CPU niceness (added to its own at start): on a machine whose cores the
    #: exchange needs, chain work yields to the order path and catches up when they are free; 0: as is
    settlement_nice: int = Field(10, ge=0, le=19)
    #: the port `voltbourse settle` serves its in-process chain on (JSON-RPC, 127.0.0.1); 0: a free one
    settlement_rpc_port: int = Field(0, ge=0, le=65535)
    #: JSON-RPC node to use; unset: an in-process py-evm chain (eth-tester), kept in chain_data_dir
    chain_rpc_url: str | None = None
    #: directory of the in-process chain (its blocks and state, reopened at every start); unset:
    #: <data_dir>/chain/<market_id>; "ephemeral": in memory, empty at every start (tests, benches)
    chain_data_dir: Literal["ephemeral"] | Path | None = None
    #: operator key (0x hex) that deploys the contracts and anchors batches; required with
    #: chain_rpc_url, defaults to eth-tester's first funded key in process
    chain_operator_key: SecretStr | None = None
    #: trades per batch (at most), and the age after which a smaller batch is sent anyway. A
    #: batch costs the settle process ≈ 75 ms of CPU whatever its size (py-evm runs anchorBatch,
    #: its receipt and events are read), so under heavy flow large batches leave the cores to
    #: the order path (2 000: ≈ 0.24 of a core during bench e2e, 10 000: ≈ 0.13)
    settlement_batch_size: int = Field(10_000, ge=1, le=20_000)
    settlement_max_age_s: float = Field(5.0, gt=0, le=3600)
    #: thin flow: a batch of fewer trades than this waits past settlement_max_age_s, at most until
    #: its oldest trade waited settlement_thin_max_age_s (fewer, larger batches: gas per trade
    #: falls about 5x at bots-like flow, for up to that much more lag); 0: off
    settlement_min_batch: int = Field(0, ge=0, le=20_000)
    settlement_thin_max_age_s: float = Field(60.0, gt=0, le=86_400)
    #: seconds between worker polls when there is nothing to do
    settlement_poll_s: float = Field(0.5, gt=0)
    #: first and longest wait between retries after a chain error
    settlement_retry_s: float = Field(1.0, gt=0)
    settlement_retry_max_s: float = Field(60.0, gt=0)

    # --- metering and billing (exchange/metering/, docs/metering.md) -----------
    #: length of a metering interval (minutes); products must be whole multiples of it
    metering_interval_minutes: Literal[5, 10, 15, 30, 60] = 15
    #: largest readings upload accepted (CSV or xlsx), in MiB
    metering_upload_max_mb: int = Field(256, ge=1, le=4096)
    #: the tariff of members who have none assigned
    metering_default_tariff: str = "default"

    # --- member portal (exchange/portal/, docs/portal.md) ----------------------
    #: hours a member portal sign-in lasts (its session cookie's Max-Age)
    portal_session_hours: int = Field(12, ge=1, le=24 * 30)
    #: the demo-only sign-in key (at least 16 characters): with it, GET /portal/demo-login?member=...&key=...
    #: signs a member in without a wallet. Unset (the default; anything but a demo): that route answers 404
    portal_demo_login: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        file_source = _config_file_source(settings_cls)
        if file_source is not None:
            sources.append(file_source)
        return tuple(sources)

    # --- validators ----------------------------------------------------------
    @field_validator("data_dir")
    @classmethod
    def _data_dir_outside_checkout(cls, v: Path) -> Path:
        v = v.expanduser().absolute()
        resolved = v.resolve()
        if (_CHECKOUT / "pyproject.toml").is_file() and resolved.is_relative_to(_CHECKOUT):
            raise ValueError(
                f"data_dir {v} is inside the source checkout {_CHECKOUT}; "
                "use a directory outside it (default: the per-user data dir)"
            )
        return v

    @field_validator("chain_data_dir")
    @classmethod
    def _chain_dir_outside_checkout(cls, v: Path | str | None) -> Path | str | None:
        if isinstance(v, Path):
            return cls._data_dir_outside_checkout(v)
        return v

    @field_validator("product_minutes", "metering_interval_minutes", mode="before")
    @classmethod
    def _int_from_env(cls, v: Any) -> Any:
        # environment values arrive as strings; Literal[15, 30, 60] does not coerce them
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        return v

    @field_validator("portal_demo_login")
    @classmethod
    def _demo_key_long(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("the demo sign-in key must have at least 16 characters (or be unset)")
        return v

    @field_validator("sim_start")
    @classmethod
    def _sim_start_utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None or v.tzinfo.utcoffset(v) is None:
            raise ValueError(
                "sim_start must be timezone-aware, e.g. 2025-06-01T00:00:00Z or 2025-06-01T00:00:00+02:00"
            )
        return v.astimezone(UTC)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {v!r} (expected an IANA name like 'Europe/Amsterdam')") from exc
        return v

    @field_validator("gate_day_ahead_local_time")
    @classmethod
    def _naive_local_time(cls, v: time) -> time:
        if v.tzinfo is not None:
            raise ValueError("gate_day_ahead_local_time is a local wall-clock time; give it without an offset")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.price_min_ticks >= self.price_max_ticks:
            raise ValueError("price_min_ticks must be below price_max_ticks")
        if self.gate == "day_ahead" and self.open_days_before < 1:
            raise ValueError("with the day_ahead gate, open_days_before must be >= 1 (products open before the gate)")
        if self.mechanism == "call_then_continuous" and self.gate != "rolling":
            raise ValueError("mechanism call_then_continuous needs gate=rolling: the day-ahead auction clears at "
                             "gate_day_ahead_local_time on D-1, intraday trading runs until the rolling gate")
        return self

    # --- helpers (derived, no I/O) -------------------------------------------
    @property
    def tz(self) -> ZoneInfo:
        """The community's timezone as a ZoneInfo."""
        return ZoneInfo(self.timezone)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from keyword overrides, the environment and VOLTBOURSE_CONFIG."""
    return Settings(**overrides)
