"""engine_inbox: engine commands from outside the writer process (the settlement process's
collateral updates), applied in order by the runtime's inbox consumer, each row keyed once

Revision ID: 0011
Revises: 0008
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE engine_inbox (
      market_id   text        NOT NULL,
      inbox_id    bigserial   NOT NULL,
      key         text        NOT NULL,              -- the poster's idempotency key
      command     jsonb       NOT NULL,              -- an engine command (command_to_dict) or a query
      created_at  timestamptz NOT NULL DEFAULT now(),
      applied_at  timestamptz,                       -- NULL until the runtime applied it
      applied_seq bigint,                            -- the journal's last seq after it (NULL: not journaled)
      result      jsonb,                             -- {"ok": true} | {"rejected": code, "detail": ..} | a query's answer
      PRIMARY KEY (market_id, inbox_id),
      UNIQUE (market_id, key)
    )""")
    op.execute("CREATE INDEX engine_inbox_unapplied ON engine_inbox (market_id, inbox_id) WHERE applied_at IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE engine_inbox")
