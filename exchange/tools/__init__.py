"""Entry points and tools on top of everything else: the console script, serve (the
composition root that lists the subsystems), demo, benchmarks, workloads."""
