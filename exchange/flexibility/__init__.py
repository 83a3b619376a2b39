"""Flexibility gateway: community demand response pooled into balancing-market bids.

* ``core/``      pure, deterministic logic (offers, viability, ranking, pooling,
                 activation split, delivery check, revenue sharing)
* ``market.py``  the balancing-market adapter interface and the simulated TSO
* ``service.py`` the edges: PostgreSQL, WebSocket handlers, operator routes, metrics
* ``cli.py``     ``voltbourse flex ...`` commands

See docs/flexibility.md.
"""
