"""settlement: a batch's trades are its trade-id range, kept in settlement's own table; the
runtime's ``trades`` table no longer carries settlement's ``batch_id`` (nor its two indexes,
maintained on every trade the journal wrote)

Batches are formed in trade-id order under a table lock, each taking the trades after the
previous one's ``last_trade_id``, so ``first_trade_id..last_trade_id`` names the trades that
``trades.batch_id`` marked. The upgrade checks that on the data before it drops the column
(and refuses, naming what differs, otherwise). Downgrade writes the column back from the
ranges; trades with ids below 1 (historic trades a benchmark seeds) get ``-1`` again, the
mark that kept them out of settlement.

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

# What must hold for the ranges to name exactly the marked trades (each a few rows at most,
# each linear in the tables at worst): no two ranges of a market overlap; every marked trade
# lies in its batch's range; no trade up to a market's last range is unmarked (ids below 1
# are historic trades never settled).
_CHECKS = {
    "overlapping ranges": """
        SELECT market_id, batch_id FROM (
          SELECT market_id, batch_id, first_trade_id,
                 max(last_trade_id) OVER (PARTITION BY market_id ORDER BY first_trade_id
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
          FROM settlement_batches) r
        WHERE first_trade_id <= before LIMIT 5""",
    "trades marked with a batch whose range does not hold them": """
        SELECT t.market_id, t.trade_id FROM trades t
        LEFT JOIN settlement_batches b ON b.market_id = t.market_id AND b.batch_id = t.batch_id
        WHERE t.batch_id > 0 AND (b.batch_id IS NULL OR t.trade_id NOT BETWEEN b.first_trade_id AND b.last_trade_id)
        LIMIT 5""",
    "trades in no batch below a later batch": """
        SELECT t.market_id, t.trade_id FROM trades t
        JOIN (SELECT market_id, max(last_trade_id) AS floor FROM settlement_batches GROUP BY market_id) f
          ON f.market_id = t.market_id
        WHERE (t.batch_id IS NULL OR t.batch_id < 1) AND t.trade_id BETWEEN 1 AND f.floor
        LIMIT 5""",
}


def upgrade() -> None:
    bind = op.get_bind()
    found = []
    for what, sql in _CHECKS.items():
        rows = bind.exec_driver_sql(sql).fetchall()
        if rows:
            found.append(f"{what}: " + ", ".join(f"market {m} #{n}" for m, n in rows))
    if found:
        raise RuntimeError("the settlement batches' trade ranges do not name exactly the trades trades.batch_id "
                           "marks, so the column is kept (nothing was changed): " + "; ".join(found)
                           + ". Run `voltbourse settlement reconcile` with the previous version.")
    # the batch of a trade: the first batch whose range ends at or after it (ranges never share an end)
    op.execute("CREATE UNIQUE INDEX settlement_batches_range ON settlement_batches (market_id, last_trade_id)")
    op.execute("DROP INDEX trades_batch")
    op.execute("DROP INDEX trades_unbatched")
    op.execute("ALTER TABLE trades DROP COLUMN batch_id")


def downgrade() -> None:
    op.execute("ALTER TABLE trades ADD COLUMN batch_id bigint")
    op.execute("UPDATE trades t SET batch_id = b.batch_id FROM settlement_batches b WHERE b.market_id = t.market_id "
               "AND t.trade_id BETWEEN b.first_trade_id AND b.last_trade_id")
    op.execute("UPDATE trades SET batch_id = -1 WHERE trade_id < 1 AND batch_id IS NULL")
    op.execute("CREATE INDEX trades_unbatched ON trades (market_id, trade_id) WHERE batch_id IS NULL")
    op.execute("CREATE INDEX trades_batch ON trades (market_id, batch_id)")
    op.execute("DROP INDEX settlement_batches_range")
