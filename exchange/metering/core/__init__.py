"""The pure rules of metering and billing: no I/O, integers only, deterministic."""
