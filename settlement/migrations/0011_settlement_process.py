"""settlement: the settlement process's status (alerts, counters, its chain's JSON-RPC
address) for the server's routes, metrics and feed, and the operator's requests
(credit a member, reconcile) that the settlement process executes

Revision ID: 0011s
Revises: 0010
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011s"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE settlement_status (
      market_id   text        PRIMARY KEY,
      status      jsonb       NOT NULL,      -- SettlementWorker.status() plus its counters
      rpc_url     text,                      -- where the settlement process serves its in-process chain
      pid         integer     NOT NULL,
      updated_at  timestamptz NOT NULL DEFAULT now()
    )""")
    op.execute("""
    CREATE TABLE settlement_requests (
      market_id   text        NOT NULL,
      request_id  bigserial   NOT NULL,
      kind        text        NOT NULL CHECK (kind IN ('credit', 'reconcile')),
      args        jsonb       NOT NULL DEFAULT '{}',
      state       text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
      result      jsonb,
      created_at  timestamptz NOT NULL DEFAULT now(),
      done_at     timestamptz,
      PRIMARY KEY (market_id, request_id)
    )""")
    op.execute("CREATE INDEX settlement_requests_open ON settlement_requests (market_id, request_id) "
               "WHERE state IN ('pending', 'running')")


def downgrade() -> None:
    op.execute("DROP TABLE settlement_requests")
    op.execute("DROP TABLE settlement_status")
