"""initial schema: markets, journal, trades, consumer_cursors

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement per op.execute: asyncpg prepares each statement, and a prepared
# statement cannot hold several commands.
UPGRADE = [
    """
    CREATE TABLE markets (
      market_id  text PRIMARY KEY,
      config     jsonb NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # one row per engine command: the command (the engine's only input) and the events it produced
    """
    CREATE TABLE journal (
      market_id  text   NOT NULL,
      cmd_seq    bigint NOT NULL,           -- per-market command sequence, 1,2,3...
      first_seq  bigint NOT NULL,           -- per-market event sequence of this command's first event
      last_seq   bigint NOT NULL,           -- ... and of its last event (every command yields >= 1 event)
      ts         timestamptz NOT NULL,      -- the command's time input (UTC)
      command    jsonb  NOT NULL,
      events     jsonb  NOT NULL,           -- JSON array of the events, in order
      committed_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, cmd_seq)
    )
    """,
    "CREATE UNIQUE INDEX journal_last_seq ON journal (market_id, last_seq)",
    # projection of trade events, written in the same transaction as the journal rows
    """
    CREATE TABLE trades (
      market_id   text   NOT NULL,
      trade_id    bigint NOT NULL,
      seq         bigint NOT NULL,
      product_id  text   NOT NULL,
      delivery_start timestamptz NOT NULL,
      buyer       text   NOT NULL,
      seller      text   NOT NULL,
      buy_order_id  bigint NOT NULL,
      sell_order_id bigint NOT NULL,
      energy_wh   bigint NOT NULL CHECK (energy_wh > 0),
      price_ticks bigint NOT NULL,
      ts          timestamptz NOT NULL,
      PRIMARY KEY (market_id, trade_id)
    )
    """,
    "CREATE INDEX trades_product ON trades (market_id, product_id)",
    # downstream consumers' cursors (last event seq processed)
    """
    CREATE TABLE consumer_cursors (
      consumer   text   NOT NULL,
      market_id  text   NOT NULL,
      seq        bigint NOT NULL,
      updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (consumer, market_id)
    )
    """,
]

DOWNGRADE = [
    "DROP TABLE consumer_cursors",
    "DROP TABLE trades",  # drops trades_product with it
    "DROP TABLE journal",  # drops journal_last_seq with it
    "DROP TABLE markets",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
