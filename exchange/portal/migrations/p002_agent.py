"""portal: members' delegations to a managed trading agent, and the agent's keys

Revision ID: p002
Revises: p001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "p002"
down_revision: str | Sequence[str] | None = "p001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    # The platform's agent key of each member (the agent may trade for the member only within
    # a delegation the member signed; the key alone is worth nothing).
    """
    CREATE TABLE portal_agent_keys (
      market_id   text NOT NULL,
      member      text NOT NULL,
      address     text NOT NULL,
      private_key text NOT NULL,
      created_at  timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, member)
    )
    """,
    # A delegation the member signed (EIP-712, exchange.protocol.auth.DELEGATION_TYPES): its id is
    # the typed data's hash; one active per member; revoked_at ends it at once.
    """
    CREATE TABLE portal_delegations (
      market_id     text NOT NULL,
      delegation_id text NOT NULL CHECK (delegation_id ~ '^0x[0-9a-f]{64}$'),
      member        text NOT NULL,
      delegate      text NOT NULL,
      message       jsonb NOT NULL,
      signature     text NOT NULL,
      expires_at    timestamptz NOT NULL,
      created_at    timestamptz NOT NULL DEFAULT now(),
      revoked_at    timestamptz,
      PRIMARY KEY (market_id, delegation_id)
    )
    """,
    "CREATE UNIQUE INDEX portal_delegations_active ON portal_delegations (market_id, member) WHERE revoked_at IS NULL",
    # The orders the agent placed (the engine journals them with an order_delegated event; this
    # is the agent's own memory: what it rests after a restart, what it spent today).
    """
    CREATE TABLE portal_agent_orders (
      market_id     text NOT NULL,
      order_id      bigint NOT NULL,
      member        text NOT NULL,
      delegation_id text NOT NULL,
      product_id    text NOT NULL,
      side          text NOT NULL CHECK (side IN ('buy', 'sell')),
      price         bigint NOT NULL,
      quantity      bigint NOT NULL,
      local_day     date NOT NULL,
      placed_at     timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, order_id)
    )
    """,
    "CREATE INDEX portal_agent_orders_member ON portal_agent_orders (market_id, member, local_day)",
]

DOWNGRADE = ["DROP TABLE IF EXISTS portal_agent_orders CASCADE", "DROP TABLE IF EXISTS portal_delegations CASCADE", "DROP TABLE IF EXISTS portal_agent_keys CASCADE"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
