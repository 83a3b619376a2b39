"""portal: Sign-In with Ethereum nonces (single use) and members' browser sessions

Revision ID: p001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "p001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("portal",)
depends_on: str | Sequence[str] | None = "0002"

UPGRADE = [
    # Nonces the server issued for a sign-in; used_at marks the one sign-in each allows.
    """
    CREATE TABLE portal_nonces (
      market_id  text NOT NULL,
      nonce      text NOT NULL CHECK (nonce ~ '^[A-Za-z0-9]{8,128}$'),
      issued_at  timestamptz NOT NULL,
      expires_at timestamptz NOT NULL,
      used_at    timestamptz,
      PRIMARY KEY (market_id, nonce)
    )
    """,
    "CREATE INDEX portal_nonces_expiry ON portal_nonces (market_id, expires_at)",
    # A signed-in browser: the SHA-256 of its session id (the cookie's value is never stored),
    # the member, when it ends (expires_at, or revoked_at at sign-out).
    """
    CREATE TABLE portal_sessions (
      market_id  text NOT NULL,
      sid_hash   text NOT NULL CHECK (sid_hash ~ '^[0-9a-f]{64}$'),
      member     text NOT NULL,
      via        text NOT NULL CHECK (via IN ('siwe', 'demo')),
      created_at timestamptz NOT NULL,
      expires_at timestamptz NOT NULL,
      revoked_at timestamptz,
      user_agent text NOT NULL DEFAULT '' CHECK (length(user_agent) <= 300),
      PRIMARY KEY (market_id, sid_hash)
    )
    """,
    "CREATE INDEX portal_sessions_member ON portal_sessions (market_id, member) WHERE revoked_at IS NULL",
    "CREATE INDEX portal_sessions_expiry ON portal_sessions (market_id, expires_at)",
]

DOWNGRADE = ["DROP TABLE IF EXISTS portal_sessions CASCADE", "DROP TABLE IF EXISTS portal_nonces CASCADE"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
