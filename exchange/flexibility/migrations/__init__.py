"""The flexibility gateway's tables (alembic revisions found by exchange.runtime.db.subsystem_migrations)."""

TABLES: tuple[str, ...] = ("flex_offers", "flex_baselines", "flex_meter", "flex_events", "flex_invitations", "flex_bids", "flex_activations", "flex_delivery", "flex_shares", "flex_payouts")
