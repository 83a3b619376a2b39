"""snapshots: engine state at a journal position, so recovery replays only the tail

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE snapshots (
            market_id text NOT NULL,
            cmd_seq bigint NOT NULL,          -- the state after this journal command
            seq bigint NOT NULL,              -- its last event seq
            state_hash text NOT NULL,         -- MarketEngine.state_hash() of that state
            digest text NOT NULL,             -- sha256 of the stored bytes
            state bytea NOT NULL,             -- zlib-compressed JSON of MarketEngine.export_state()
            bytes bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (market_id, cmd_seq)
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE snapshots")
