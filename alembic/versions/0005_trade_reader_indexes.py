"""trades: indexes for members' reads (their trades and positions)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A member's trades and positions: WHERE market_id = $1 AND (buyer = $2 OR seller = $2) [AND seq > $3]
    op.execute("CREATE INDEX trades_buyer ON trades (market_id, buyer, seq)")
    op.execute("CREATE INDEX trades_seller ON trades (market_id, seller, seq)")


def downgrade() -> None:
    op.execute("DROP INDEX trades_seller")
    op.execute("DROP INDEX trades_buyer")
