"""settlement: chain faults — blocked batches (a revert decoded from the contracts' ABI),
batches put back after a chain rollback, the scanned block's hash, an approved redeployment

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    # 'blocked': the batch's anchorBatch reverts with an error of our contracts (decoded by
    # its selector); it is not sent again while a free eth_call says it would still revert.
    "ALTER TABLE settlement_batches DROP CONSTRAINT settlement_batches_state_check",
    "ALTER TABLE settlement_batches ADD CONSTRAINT settlement_batches_state_check "
    "CHECK (state IN ('prepared', 'sent', 'anchored', 'blocked'))",
    # {"name", "args", "selector", "text"} of the revert that blocked it (kept as history)
    "ALTER TABLE settlement_batches ADD COLUMN revert_error jsonb",
    "ALTER TABLE settlement_batches ADD COLUMN blocked_at timestamptz",
    # transactions of this batch that were mined and reverted (bounded re-signing)
    "ALTER TABLE settlement_batches ADD COLUMN reverts integer NOT NULL DEFAULT 0",
    # times the batch was anchored, then lost in a chain rollback and put back to be re-sent
    "ALTER TABLE settlement_batches ADD COLUMN heals integer NOT NULL DEFAULT 0",
    # hash of scanned_block when it was scanned: a different hash there now means a reorg
    "ALTER TABLE settlement_deployments ADD COLUMN scanned_hash text",
    # set by `voltbourse settlement redeploy --yes`: the operator allows the worker to deploy
    # anew when this deployment's contracts are gone from the node (never done silently)
    "ALTER TABLE settlement_deployments ADD COLUMN redeploy_approved_at timestamptz",
    # the worker's periodic check walks anchored batches newest block first; collateral
    # is applied in batch order over the batches not applied yet
    "CREATE INDEX settlement_batches_by_block ON settlement_batches "
    "(market_id, deployment_id, block_number DESC NULLS FIRST, batch_id DESC) WHERE state = 'anchored'",
    "CREATE INDEX settlement_batches_unapplied ON settlement_batches (market_id, batch_id) "
    "WHERE NOT collateral_applied",
]

DOWNGRADE = [
    "DROP INDEX settlement_batches_unapplied",
    "DROP INDEX settlement_batches_by_block",
    "ALTER TABLE settlement_deployments DROP COLUMN redeploy_approved_at",
    "ALTER TABLE settlement_deployments DROP COLUMN scanned_hash",
    "ALTER TABLE settlement_batches DROP COLUMN heals",
    "ALTER TABLE settlement_batches DROP COLUMN reverts",
    "ALTER TABLE settlement_batches DROP COLUMN blocked_at",
    "ALTER TABLE settlement_batches DROP COLUMN revert_error",
    "UPDATE settlement_batches SET state = 'prepared' WHERE state = 'blocked'",
    "ALTER TABLE settlement_batches DROP CONSTRAINT settlement_batches_state_check",
    "ALTER TABLE settlement_batches ADD CONSTRAINT settlement_batches_state_check "
    "CHECK (state IN ('prepared', 'sent', 'anchored'))",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
