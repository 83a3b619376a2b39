"""settlement: order_delegations (orders a member's trading agent placed, for trade proofs)

Copied from the journal's order_delegated events with the order signatures.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE order_delegations (
      market_id  text   NOT NULL,
      order_id   bigint NOT NULL,
      delegation text   NOT NULL,
      PRIMARY KEY (market_id, order_id)
    )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS order_delegations")
