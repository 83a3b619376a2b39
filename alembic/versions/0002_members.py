"""members: the operator's registry of a market's members

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement per op.execute (asyncpg prepares each statement).
UPGRADE = [
    # The metadata the engine does not know (name, role, tariffs), plus the risk limits the
    # engine does know (collateral, capacity, suspended), which the registry re-submits to the
    # engine as RegisterMember (exchange/members.py: write the row first, then the command).
    """
    CREATE TABLE members (
      market_id text NOT NULL,
      address   text NOT NULL,          -- EIP-55 checksum Ethereum address; also the engine's member id
      name      text NOT NULL DEFAULT '',
      role      text NOT NULL CHECK (role IN ('consumer','prosumer','battery','aggregator')),
      export_capacity_w    bigint NOT NULL DEFAULT 0 CHECK (export_capacity_w >= 0),
      retail_tariff_ticks  bigint NOT NULL,   -- price of grid import, ticks of 0.01 EUR/MWh
      feed_in_tariff_ticks bigint NOT NULL,   -- price of grid export
      collateral bigint NOT NULL DEFAULT 0 CHECK (collateral >= 0),  -- money units (1e-8 EUR)
      suspended  boolean NOT NULL DEFAULT false,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, address)
    )
    """,
]

DOWNGRADE = [
    "DROP TABLE members",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
