"""settlement: a batch's trades are its trade-id range, kept in settlement's own table; the
runtime's ``trades`` table no longer carries settlement's ``batch_id`` (nor its two indexes,
maintained on every trade the journal wrote)

Batches are formed in trade-id order under a table lock, each taking the trades after the
previous one's ``last_trade_id``, so ``first_trade_id..last_trade_id`` already named exactly
the trades that ``trades.batch_id`` marked (``form_batch`` refused a batch whose range was not
contiguous). Downgrade writes the column back from the ranges.

Revision ID: 0012s
Revises: 0011s
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012s"
down_revision: str | Sequence[str] | None = "0011s"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the batch of a trade: the first batch whose range ends at or after it
    op.execute("CREATE INDEX settlement_batches_range ON settlement_batches (market_id, last_trade_id)")
    op.execute("DROP INDEX trades_batch")
    op.execute("DROP INDEX trades_unbatched")
    op.execute("ALTER TABLE trades DROP COLUMN batch_id")


def downgrade() -> None:
    op.execute("ALTER TABLE trades ADD COLUMN batch_id bigint")
    op.execute("UPDATE trades t SET batch_id = b.batch_id FROM settlement_batches b WHERE b.market_id = t.market_id "
               "AND t.trade_id BETWEEN b.first_trade_id AND b.last_trade_id")
    op.execute("CREATE INDEX trades_unbatched ON trades (market_id, trade_id) WHERE batch_id IS NULL")
    op.execute("CREATE INDEX trades_batch ON trades (market_id, batch_id)")
    op.execute("DROP INDEX settlement_batches_range")
