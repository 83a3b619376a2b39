"""platform_markets: the communities (markets) one deployment hosts besides its default market

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE platform_markets (
            market_id text PRIMARY KEY CHECK (market_id ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
            name text NOT NULL DEFAULT '',
            status text NOT NULL CHECK (status IN ('active', 'suspended', 'archived')),
            overrides jsonb NOT NULL DEFAULT '{}',   -- Settings fields of this market (validated)
            token_sha256 bytea NOT NULL,             -- sha256 of its community manager's operator token
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE platform_markets")
