"""The metering and billing subsystem's tables (alembic revisions found by
exchange.runtime.db.subsystem_migrations; a branch of their own, label ``metering``)."""

TABLES: tuple[str, ...] = ("meter_points", "meter_days", "meter_corrections", "meter_uploads", "meter_devices",
                           "tariffs",
                           "tariff_prices", "member_tariffs", "fee_schedules", "grid_intensity", "bills", "bill_payouts")
