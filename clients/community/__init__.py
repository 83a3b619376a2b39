"""Community demo data and KPIs.

* :mod:`clients.community.profiles`: member profiles (BDEW standard load
  profiles via demandlib, clear-sky PV via pvlib, seeded noise, batteries),
  15-min integer Wh per member for any day, hourly aggregation.
* :mod:`clients.community.kpis`: self-sufficiency, cost against grid-only
  baselines, the P2P matrix, all exact integers/fractions.
* :mod:`clients.community.meters`: meter readings of members (their hourly
  profile split into quarter-hours plus a seeded forecast error), as the bots
  push them to the exchange's metering.
* :mod:`clients.community.zic`: allocative efficiency of the real engine with
  zero-intelligence traders (Gode & Sunder).
* :mod:`clients.community.cli`: ``voltbourse community profile`` and
  ``voltbourse bench efficiency``.

The heavy libraries (pandas, demandlib, pvlib) are imported only by
:mod:`~clients.community.profiles`; importing this package imports nothing.
"""
