"""metering: points, readings, corrections, uploads, tariffs, fees, intensity, bills, payouts

Metering points, readings per point and UTC day, corrections (audit), uploads, tariffs and their
prices, members' tariffs, fee schedules, grid CO2 intensity, bills and their community charges.

Revision ID: m001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "m001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("metering",)
depends_on: str | Sequence[str] | None = "0002"

# Units: Wh, ticks of 1e-8 EUR/Wh (0.01 EUR/MWh), money units of 1e-8 EUR (bigint); times timestamptz (UTC).
UPGRADE = [
    """
    CREATE TABLE meter_points (
      market_id  text NOT NULL,
      point_id   text NOT NULL CHECK (length(point_id) BETWEEN 1 AND 64),
      member     text NOT NULL,
      kind       text NOT NULL CHECK (kind IN ('import','export','generation','storage_charge','storage_discharge')),
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, point_id)
    )
    """,
    "CREATE INDEX meter_points_member ON meter_points (market_id, member)",
    # One row per point and UTC day: energy_wh[i] is interval i of the day (NULL: no reading).
    """
    CREATE TABLE meter_days (
      market_id  text NOT NULL,
      point_id   text NOT NULL,
      day        timestamptz NOT NULL,
      energy_wh  bigint[] NOT NULL,
      PRIMARY KEY (market_id, point_id, day)
    )
    """,
    # Every change of a stored reading (a corrected file, a live correction): the audit trail.
    """
    CREATE TABLE meter_corrections (
      correction_id  bigserial PRIMARY KEY,
      market_id      text NOT NULL,
      point_id       text NOT NULL,
      interval_start timestamptz NOT NULL,
      old_wh         bigint,
      new_wh         bigint,
      source         text NOT NULL,
      upload_id      bigint,
      at             timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX meter_corrections_point ON meter_corrections (market_id, point_id, interval_start)",
    """
    CREATE TABLE meter_uploads (
      upload_id  bigserial PRIMARY KEY,
      market_id  text NOT NULL,
      digest     text NOT NULL,
      filename   text NOT NULL,
      format     text NOT NULL,
      rows       bigint NOT NULL,
      new_values bigint NOT NULL,
      corrected  bigint NOT NULL,
      unchanged  bigint NOT NULL,
      report     jsonb NOT NULL,
      at         timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Keys that may push a member's readings over REST (its gateway), and the last nonce each
    # signer used (the member's own key too: device = member).
    """
    CREATE TABLE meter_devices (
      market_id  text NOT NULL,
      device     text NOT NULL,
      member     text NOT NULL,
      label      text NOT NULL DEFAULT '',
      last_nonce bigint NOT NULL DEFAULT 0,
      revoked    boolean NOT NULL DEFAULT false,
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, device, member)
    )
    """,
    """
    CREATE TABLE tariffs (
      market_id text NOT NULL,
      tariff_id text NOT NULL CHECK (length(tariff_id) BETWEEN 1 AND 64),
      name      text NOT NULL,
      PRIMARY KEY (market_id, tariff_id)
    )
    """,
    """
    CREATE TABLE tariff_prices (
      market_id     text NOT NULL,
      tariff_id     text NOT NULL,
      valid_from    timestamptz NOT NULL,
      import_ticks  bigint NOT NULL CHECK (import_ticks >= 0),
      feed_in_ticks bigint NOT NULL CHECK (feed_in_ticks >= 0),
      PRIMARY KEY (market_id, tariff_id, valid_from),
      FOREIGN KEY (market_id, tariff_id) REFERENCES tariffs ON DELETE CASCADE
    )
    """,
    """
    CREATE TABLE member_tariffs (
      market_id          text NOT NULL,
      member             text NOT NULL,
      effective_from     timestamptz NOT NULL,
      tariff_id          text NOT NULL,
      contracted_power_w bigint NOT NULL DEFAULT 0 CHECK (contracted_power_w >= 0),
      PRIMARY KEY (market_id, member, effective_from),
      FOREIGN KEY (market_id, tariff_id) REFERENCES tariffs
    )
    """,
    """
    CREATE TABLE fee_schedules (
      market_id      text NOT NULL,
      effective_from timestamptz NOT NULL,
      schedule       jsonb NOT NULL,
      PRIMARY KEY (market_id, effective_from)
    )
    """,
    """
    CREATE TABLE grid_intensity (
      market_id      text NOT NULL,
      valid_from     timestamptz NOT NULL,
      g_per_kwh      integer NOT NULL CHECK (g_per_kwh >= 0),
      PRIMARY KEY (market_id, valid_from)
    )
    """,
    # Issued bills: a new version only when the bill changed (a correction); the same
    # period billed again with the same data is the same version.
    """
    CREATE TABLE bills (
      market_id    text NOT NULL,
      member       text NOT NULL,
      period_start timestamptz NOT NULL,
      period_end   timestamptz NOT NULL,
      version      integer NOT NULL,
      digest       text NOT NULL,
      total_units  numeric NOT NULL,
      community_units numeric NOT NULL,
      bill         jsonb NOT NULL,
      created_at   timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, member, period_start, period_end, version)
    )
    """,
    # What members owe the community (its fees, imbalance charges), settled on chain through
    # settlement (a PayoutSource): one row per member and issued bill version that changed
    # the amount (a correction pays only the change); one on-chain event per bill run.
    """
    CREATE TABLE bill_payouts (
      payout_id     bigserial PRIMARY KEY,
      market_id     text NOT NULL,
      event_id      bigint NOT NULL,
      member        text NOT NULL,
      period_start  timestamptz NOT NULL,
      period_end    timestamptz NOT NULL,
      version       integer NOT NULL,
      amount_units  numeric NOT NULL,
      settled_batch bigint,
      created_at    timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX bill_payouts_pending ON bill_payouts (market_id, event_id) WHERE settled_batch IS NULL",
    "CREATE SEQUENCE bill_runs",
]

DOWNGRADE = ["DROP SEQUENCE IF EXISTS bill_runs"] + [f"DROP TABLE IF EXISTS {t} CASCADE" for t in (
    "bill_payouts", "bills", "grid_intensity", "fee_schedules", "member_tariffs", "tariff_prices", "tariffs", "meter_uploads",
    "meter_devices", "meter_corrections", "meter_days", "meter_points")]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
