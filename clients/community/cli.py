"""``voltbourse`` plugin commands.

    voltbourse community profile [--members N] [--date YYYY-MM-DD] [--seed N] [--json]
                                 [--clearness PERMILLE]
                                 [--lat L] [--lon L] [--altitude M] [--timezone TZ]
    voltbourse bench efficiency [--json] [--sessions N] [--seed N] [--periods N] [--mode zi-c|zi-u]
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta
from typing import Any

from clients.community.kpis import self_sufficiency, to_bp
from clients.community.profiles import COMMUNITY_TZ, Location, community_profiles, hourly_table, make_community
from clients.community.zic import run_bench


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s}") from exc


def cmd_profile(args: argparse.Namespace) -> int:
    loc = Location(args.lat, args.lon, args.altitude, args.timezone)
    day = args.date or date.today() + timedelta(days=1)
    members = make_community(args.members, seed=args.seed)
    profiles = community_profiles(members, day, loc, seed=args.seed, clearness_permille=args.clearness)
    table = hourly_table(profiles)
    rows: list[dict[str, Any]] = []
    for m in members:
        p = profiles[m.member_id]
        rows.append({
            "member": m.member_id, "kind": m.kind, "slp": m.slp, "annual_kwh": m.annual_kwh, "pv_wp": m.pv_wp,
            "battery_wh": m.battery.capacity_wh if m.battery else 0,
            "consumption_wh": p.consumption_total, "generation_wh": p.generation_total,
        })
    hours = len(next(iter(table.values())))
    cons = sum(r["consumption_wh"] for r in rows)
    gen = sum(r["generation_wh"] for r in rows)
    ss = self_sufficiency(table)
    hourly_totals: dict[str, tuple[int, int]] = {}
    for row in table.values():
        for pid, (c, g) in row.items():
            hc, hg = hourly_totals.get(pid, (0, 0))
            hourly_totals[pid] = (hc + c, hg + g)
    summary = {
        "date": day.isoformat(), "timezone": loc.timezone, "seed": args.seed, "clearness_permille": args.clearness,
        "location": {"lat": loc.latitude, "lon": loc.longitude, "altitude_m": loc.altitude_m},
        "members": len(rows), "products": hours,
        "kinds": {k: sum(r["kind"] == k for r in rows) for k in ("aggregator", "consumer", "prosumer", "battery")},
        "consumption_wh": cons, "generation_wh": gen,
        "self_sufficiency_without_trading_bp": to_bp(ss),
        "hourly": [{"product_id": pid, "consumption_wh": c, "generation_wh": g}
                   for pid, (c, g) in sorted(hourly_totals.items())],
        "per_member": rows,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"community of {len(rows)} members on {day} ({loc.timezone}, lat {loc.latitude} lon {loc.longitude}),"
          f" {hours} hourly products, seed {args.seed}")
    print("  " + ", ".join(f"{v} {k}" for k, v in summary["kinds"].items()))
    print(f"{'member':<12} {'kind':<10} {'slp':<4} {'kWh/a':>7} {'Wp':>7} {'batt Wh':>8} {'cons Wh':>9} {'gen Wh':>9}")
    for r in rows:
        print(f"{r['member']:<12} {r['kind']:<10} {r['slp']:<4} {r['annual_kwh']:>7} {r['pv_wp']:>7} "
              f"{r['battery_wh']:>8} {r['consumption_wh']:>9} {r['generation_wh']:>9}")
    print(f"community: consumption {cons} Wh, generation {gen} Wh, "
          f"self-sufficiency without trading {to_bp(ss) / 100:.2f} %")
    return 0


def cmd_efficiency(args: argparse.Namespace) -> int:
    r = run_bench(sessions=args.sessions, seed=args.seed, periods=args.periods, mode=args.mode)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['mode']} allocative efficiency over {r['sessions']} sessions x {r['periods']} periods "
          f"(seed {r['seed']}): median {r['efficiency_median_pct']} %, min {r['efficiency_min_pct']} %, "
          f"max {r['efficiency_max_pct']} %")
    for m, v in r["efficiency_by_market_median_pct"].items():
        print(f"  {m:<14} median {v} %")
    print(f"trades {r['trades']} (competitive quantity {r['equilibrium_trades']}), loss-making {r['loss_trades']}, "
          f"price RMSD from equilibrium {r['price_rmsd_eur_mwh']} EUR/MWh, {r['engine_commands']} engine commands "
          f"in {r['seconds']} s")
    return 0


def add_commands(sub, bench_sub) -> None:
    p = sub.add_parser("community", help="community demo data")
    csub = p.add_subparsers(dest="community_command", required=True, metavar="ACTION")
    c = csub.add_parser("profile", help="members' consumption/generation for one day (BDEW SLP + clear-sky PV)")
    c.add_argument("--members", type=int, default=24, help="community size (default 24)")
    c.add_argument("--date", type=_date, help="local delivery day YYYY-MM-DD (default: tomorrow)")
    c.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    c.add_argument("--lat", type=float, default=48.14, help="latitude (default 48.14, Munich)")
    c.add_argument("--lon", type=float, default=11.58, help="longitude (default 11.58)")
    c.add_argument("--altitude", type=float, default=520.0, help="altitude m (default 520)")
    c.add_argument("--timezone", default=COMMUNITY_TZ, help=f"local time zone of the profiles (default {COMMUNITY_TZ})")
    c.add_argument("--clearness", type=int, default=1000, metavar="PERMILLE",
                   help="PV as a share of clear sky for the day, per mille (default 1000)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_profile)

    b = bench_sub.add_parser("efficiency", help="ZI-C allocative efficiency on the real engine (Gode & Sunder)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--sessions", type=int, default=20, help="sessions, cycling over the markets (default 20)")
    b.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    b.add_argument("--periods", type=int, default=6, help="trading periods per session (default 6)")
    b.add_argument("--mode", choices=("zi-c", "zi-u"), default="zi-c", help="constrained (default) or unconstrained")
    b.set_defaults(func=cmd_efficiency)
