"""The member portal's tables (alembic revisions found by
exchange.runtime.db.subsystem_migrations; a branch of their own, label ``portal``)."""

TABLES: tuple[str, ...] = ("portal_nonces", "portal_sessions", "portal_agent_keys", "portal_delegations",
                           "portal_agent_orders")
