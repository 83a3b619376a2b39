"""settlement: the registry's Deposited events, recorded by the worker's chain scan, for a
member's own view of its collateral (the peer message my_collateral)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE settlement_deposits (
      market_id        text    NOT NULL,
      deployment_id    bigint  NOT NULL REFERENCES settlement_deployments,
      tx_hash          text    NOT NULL,
      log_index        integer NOT NULL,
      block_number     bigint  NOT NULL,
      member           text    NOT NULL,
      amount           numeric(78, 0) NOT NULL,
      collateral_after numeric(78, 0) NOT NULL,  -- the member's collateral right after it (the event's)
      seen_at          timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, deployment_id, tx_hash, log_index)
    )
    """)
    op.execute("CREATE INDEX settlement_deposits_member ON settlement_deposits "
               "(market_id, deployment_id, member, block_number DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS settlement_deposits")
