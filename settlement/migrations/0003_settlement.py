"""settlement: contract deployments, order signatures, batches, trade -> batch, chain collateral

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    # The contracts deployed for a market on a chain (identified by chain id + genesis
    # hash). The in-process EVM starts empty on every run: a deployment whose code is
    # gone is retired (active = false) and its batches are anchored again on the new one.
    """
    CREATE TABLE settlement_deployments (
      deployment_id    bigserial PRIMARY KEY,
      market_id        text   NOT NULL,
      chain_id         bigint NOT NULL,
      genesis_hash     text   NOT NULL,
      token_address    text   NOT NULL,
      registry_address text   NOT NULL,
      operator_address text   NOT NULL,
      deploy_block     bigint NOT NULL,
      scanned_block    bigint NOT NULL,     -- chain events (deposits, withdrawals) read up to here
      active           boolean NOT NULL DEFAULT true,
      created_at       timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE UNIQUE INDEX settlement_deployments_active ON settlement_deployments (market_id) WHERE active",
    # Signatures of signed orders, from the journal's order_accepted events (leaf encoding).
    """
    CREATE TABLE order_signatures (
      market_id text   NOT NULL,
      order_id  bigint NOT NULL,
      signature text   NOT NULL,
      PRIMARY KEY (market_id, order_id)
    )
    """,
    """
    CREATE TABLE settlement_batches (
      market_id      text   NOT NULL,
      batch_id       bigint NOT NULL CHECK (batch_id > 0),
      first_trade_id bigint NOT NULL,
      last_trade_id  bigint NOT NULL,
      trade_count    integer NOT NULL CHECK (trade_count > 0),
      first_seq      bigint NOT NULL,
      last_seq       bigint NOT NULL,
      root           text   NOT NULL,      -- 0x-hex Merkle root
      nets           jsonb  NOT NULL,      -- [[address, amount], ...] money units, sum 0
      state          text   NOT NULL CHECK (state IN ('prepared', 'sent', 'anchored')),
      deployment_id  bigint REFERENCES settlement_deployments,
      tx_hash        text,
      raw_tx         bytea,                -- the signed transaction, re-sent as is after a crash
      block_number   bigint,
      gas_used       bigint,
      attempts       integer NOT NULL DEFAULT 0,
      last_error     text,
      created_at     timestamptz NOT NULL DEFAULT now(),
      sent_at        timestamptz,
      anchored_at    timestamptz,
      collateral_applied boolean NOT NULL DEFAULT false,
      PRIMARY KEY (market_id, batch_id),
      CHECK (last_trade_id >= first_trade_id)
    )
    """,
    "CREATE INDEX settlement_batches_open ON settlement_batches (market_id, batch_id) WHERE state <> 'anchored'",
    "ALTER TABLE trades ADD COLUMN batch_id bigint",
    "CREATE INDEX trades_unbatched ON trades (market_id, trade_id) WHERE batch_id IS NULL",
    "CREATE INDEX trades_batch ON trades (market_id, batch_id)",
    # Withdrawal requests seen on chain, and what the exchange did about them.
    """
    CREATE TABLE settlement_withdrawals (
      market_id     text   NOT NULL,
      deployment_id bigint NOT NULL REFERENCES settlement_deployments,
      request_id    bigint NOT NULL,
      member        text   NOT NULL,
      amount        bigint NOT NULL CHECK (amount > 0),
      state         text   NOT NULL CHECK (state IN ('requested', 'reserved', 'executed', 'rejected')),
      reason        text,
      tx_hash       text,
      updated_at    timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (market_id, deployment_id, request_id)
    )
    """,
]

DOWNGRADE = [
    "DROP TABLE settlement_withdrawals",
    "DROP INDEX trades_batch",
    "DROP INDEX trades_unbatched",
    "ALTER TABLE trades DROP COLUMN batch_id",
    "DROP TABLE settlement_batches",
    "DROP TABLE order_signatures",
    "DROP TABLE settlement_deployments",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
