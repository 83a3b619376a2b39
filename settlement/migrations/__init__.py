"""Settlement's tables (alembic revisions found by exchange.runtime.db.subsystem_migrations)."""

TABLES: tuple[str, ...] = (
    "settlement_deployments", "order_signatures", "settlement_batches", "settlement_withdrawals",
    "order_delegations", "settlement_deposits", "settlement_status", "settlement_requests")
