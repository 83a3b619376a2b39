"""flexibility: offers, baselines, meter readings, events, invitations, bids,
activations, delivery checks, revenue shares and the payouts settlement picks up

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Units: W, Wh, ticks of 0.01 EUR/MWh, money units of 1e-8 EUR (all bigint); times timestamptz (UTC).
# One statement per op.execute (asyncpg prepares each statement).
UPGRADE = [
    """
    CREATE TABLE flex_offers (
      market_id    text NOT NULL,
      offer_id     bigint NOT NULL,
      member       text NOT NULL,
      period_start timestamptz NOT NULL,
      period_end   timestamptz NOT NULL,
      direction    text NOT NULL CHECK (direction IN ('up','down')),
      power_w      bigint NOT NULL CHECK (power_w > 0),
      energy_wh    bigint CHECK (energy_wh > 0),          -- NULL: power x period
      price_ticks  bigint NOT NULL,
      kind         text NOT NULL CHECK (kind IN ('reduction','shift')),
      status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open','cancelled')),
      created_at   timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, offer_id)
    )
    """,
    "CREATE INDEX flex_offers_period ON flex_offers (market_id, period_start)",
    """
    CREATE TABLE flex_baselines (
      market_id     text NOT NULL,
      member        text NOT NULL,
      slot_start    timestamptz NOT NULL,                   -- 15-minute slot
      consumption_wh bigint NOT NULL CHECK (consumption_wh >= 0),
      generation_wh  bigint NOT NULL CHECK (generation_wh >= 0),
      source        text NOT NULL CHECK (source IN ('member','computed')),
      updated_at    timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, member, slot_start)
    )
    """,
    """
    CREATE TABLE flex_meter (
      market_id      text NOT NULL,
      member         text NOT NULL,
      interval_start timestamptz NOT NULL,                  -- 10-minute interval
      consumption_wh bigint NOT NULL CHECK (consumption_wh >= 0),
      generation_wh  bigint NOT NULL CHECK (generation_wh >= 0),
      updated_at     timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, member, interval_start)
    )
    """,
    """
    CREATE TABLE flex_events (
      market_id    text NOT NULL,
      event_id     bigint NOT NULL,
      period_start timestamptz NOT NULL,
      period_end   timestamptz NOT NULL,
      direction    text NOT NULL,
      origin       text NOT NULL CHECK (origin IN ('auto','operator')),
      phase        text NOT NULL,      -- inviting, bidding, delivering, settled, no_bid, not_activated, not_viable, ...
      reason       text NOT NULL DEFAULT '',
      target_w     bigint,
      viability    jsonb NOT NULL DEFAULT '{}',
      allocation   jsonb NOT NULL DEFAULT '{}',
      gross_units   bigint NOT NULL DEFAULT 0,
      penalty_units bigint NOT NULL DEFAULT 0,
      shortfall_wh  bigint NOT NULL DEFAULT 0,
      created_at   timestamptz NOT NULL DEFAULT now(),
      updated_at   timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, event_id)
    )
    """,
    """
    CREATE TABLE flex_invitations (
      market_id     text NOT NULL,
      invitation_id bigint NOT NULL,
      event_id      bigint NOT NULL,
      member        text NOT NULL,
      offer_id      bigint NOT NULL,
      rank          integer NOT NULL,
      score         bigint NOT NULL,
      reserve       boolean NOT NULL,
      status        text NOT NULL CHECK (status IN ('invited','accepted','declined','expired')),
      invited_at    timestamptz NOT NULL,
      respond_by    timestamptz NOT NULL,
      PRIMARY KEY (market_id, invitation_id)
    )
    """,
    """
    CREATE TABLE flex_bids (
      market_id    text NOT NULL,
      bid_id       bigint NOT NULL,
      event_id     bigint NOT NULL,
      product      text NOT NULL,
      direction    text NOT NULL,
      volume_w     bigint NOT NULL,
      price_ticks  bigint NOT NULL,
      validity_start timestamptz NOT NULL,
      validity_end   timestamptz NOT NULL,
      divisible    boolean NOT NULL,
      portions     jsonb NOT NULL,                         -- [{offer_id, member, power_w, price}]
      status       text NOT NULL,                          -- built, submitted, rejected: ..., activated, not_activated
      activated_w  bigint NOT NULL DEFAULT 0,
      activation_price_ticks bigint,
      PRIMARY KEY (market_id, bid_id)
    )
    """,
    """
    CREATE TABLE flex_activations (
      market_id      text NOT NULL,
      instruction_id bigint NOT NULL,
      event_id       bigint NOT NULL,
      member         text NOT NULL,
      offer_id       bigint NOT NULL,
      bid_id         bigint,                               -- NULL: a reserve call
      power_w        bigint NOT NULL,
      start_at       timestamptz NOT NULL,
      end_at         timestamptz NOT NULL,
      energy_wh      bigint NOT NULL,
      reserve        boolean NOT NULL,
      PRIMARY KEY (market_id, instruction_id)
    )
    """,
    """
    CREATE TABLE flex_delivery (
      market_id      text NOT NULL,
      event_id       bigint NOT NULL,
      member         text NOT NULL,
      interval_start timestamptz NOT NULL,
      interval_end   timestamptz NOT NULL,
      required_wh    bigint NOT NULL,
      baseline_wh    bigint NOT NULL,
      metered_wh     bigint,                               -- NULL: no reading (counted as the baseline)
      delivered_wh   bigint NOT NULL,
      shortfall_wh   bigint NOT NULL,
      over_wh        bigint NOT NULL,
      PRIMARY KEY (market_id, event_id, member, interval_start)
    )
    """,
    """
    CREATE TABLE flex_shares (
      market_id     text NOT NULL,
      event_id      bigint NOT NULL,
      member        text NOT NULL,
      rule          text NOT NULL,
      delivered_wh  bigint NOT NULL,
      weight        numeric NOT NULL,
      share_units   bigint NOT NULL,
      penalty_units bigint NOT NULL,
      payout_units  bigint NOT NULL,
      PRIMARY KEY (market_id, event_id, member)
    )
    """,
    # The settlement worker's input: pending payouts are netted into an on-chain batch, then
    # marked settled with the batch id (docs/flexibility.md, "Payouts").
    """
    CREATE TABLE flex_payouts (
      market_id    text NOT NULL,
      payout_id    bigint NOT NULL,
      event_id     bigint NOT NULL,
      member       text NOT NULL,
      amount_units bigint NOT NULL,                        -- money units (1e-8 EUR); negative: the member pays
      status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','settled')),
      batch_id     bigint,
      created_at   timestamptz NOT NULL DEFAULT now(),
      settled_at   timestamptz,
      PRIMARY KEY (market_id, payout_id),
      UNIQUE (market_id, event_id, member)
    )
    """,
    "CREATE INDEX flex_payouts_pending ON flex_payouts (market_id, payout_id) WHERE status = 'pending'",
]

DOWNGRADE = [
    "DROP TABLE flex_payouts",
    "DROP TABLE flex_shares",
    "DROP TABLE flex_delivery",
    "DROP TABLE flex_activations",
    "DROP TABLE flex_bids",
    "DROP TABLE flex_invitations",
    "DROP TABLE flex_events",
    "DROP TABLE flex_meter",
    "DROP TABLE flex_baselines",
    "DROP TABLE flex_offers",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
