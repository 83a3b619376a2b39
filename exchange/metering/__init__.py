"""Metering and billing: meter readings in, delivery settled against exchange positions,
tariffs and fees, members' bills and the community's KPIs (docs/metering.md). A
subsystem of the exchange (plugin.py); its pure rules are in core/."""
