"""Headless load test: start an exchange, run Locust against it, print the figures.

    python -m loadtest.run [--users 20] [--spawn-rate 20] [--duration 15s] [--json]
    make loadtest USERS=50 DURATION=60s

Starts the embedded PostgreSQL and ``voltbourse serve`` in a subprocess on
127.0.0.1 (real clock, rolling gate so the next day's products are open at any
hour), registers one member per user over the operator REST API (keys from
``--seed``), runs ``locust --headless`` with :mod:`loadtest.locustfile` for
``--duration`` and prints requests/s, failures and the p50/p95/p99 response
times of every request type and in aggregate (from Locust's CSV statistics).
With ``--url`` (and ``--operator-token``) it targets a running exchange instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from clients.sdk.keys import member_key
from clients.sdk.local import LocalExchange, register_members

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TOKEN = "loadtest-operator-token"


def _members(n: int, seed: str) -> list[dict]:
    # the keys of loadtest.locustfile.loadtest_key (that module is not imported here: importing locust
    # monkey-patches the process with gevent)
    return [{"address": member_key(f"loadtest-{seed}", i).address, "name": f"loadtest {i}", "role": "prosumer",
             "export_capacity_w": 10**9, "retail_tariff_ticks": 30_000, "feed_in_tariff_ticks": 8_000,
             "collateral": 10**17} for i in range(n)]


def _read_stats(prefix: Path) -> dict:
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return 0.0

    out = {}
    for r in rows:
        name = "Aggregated" if r["Name"] == "Aggregated" else r["Name"]
        out[name] = {"requests": int(num(r["Request Count"])), "failures": int(num(r["Failure Count"])),
                     "rps": round(num(r["Requests/s"]), 1), "p50_ms": num(r["50%"]), "p95_ms": num(r["95%"]),
                     "p99_ms": num(r["99%"]), "avg_ms": round(num(r["Average Response Time"]), 2),
                     "max_ms": num(r["Max Response Time"])}
    failures = []
    fpath = Path(f"{prefix}_failures.csv")
    if fpath.exists():
        failures = [{"name": r["Name"], "error": r["Error"], "occurrences": int(num(r["Occurrences"]))}
                    for r in csv.DictReader(open(fpath))]
    return {"stats": out, "failures": failures}


def run_locust(ws_url: str, *, users: int, spawn_rate: float, duration: str, seed: str, members: int,
               workdir: Path, products: int = 6) -> dict:
    prefix = workdir / "locust"
    env = dict(os.environ, VOLTBOURSE_LOADTEST_SEED=seed, VOLTBOURSE_LOADTEST_MEMBERS=str(members),
               VOLTBOURSE_LOADTEST_PRODUCTS=str(products))
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
           "--spawn-rate", str(spawn_rate), "--run-time", duration, "--host", ws_url, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    proc = subprocess.run(cmd, env=env, cwd=str(Path(__file__).resolve().parent.parent), capture_output=True,
                          text=True, timeout=_seconds(duration) + 120)
    if proc.returncode != 0 or not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"locust failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = _read_stats(prefix)
    result.update(users=users, duration=duration, url=ws_url)
    return result


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, num = 0.0, ""
    for ch in duration.strip():
        if ch.isdigit() or ch == ".":
            num += ch
        else:
            total += float(num) * units[ch]
            num = ""
    return total + (float(num) if num else 0)


def run(users: int = 20, spawn_rate: float = 20, duration: str = "15s", seed: str = "1", url: str | None = None,
        operator_token: str | None = None, products: int = 6) -> dict:
    with tempfile.TemporaryDirectory(prefix="voltbourse-locust-") as tmp:
        if url is not None:
            if operator_token:
                register_members(url.replace("ws://", "http://", 1).rsplit("/ws", 1)[0], operator_token,
                                 _members(users, seed))
            return run_locust(url, users=users, spawn_rate=spawn_rate, duration=duration, seed=seed, members=users,
                              workdir=Path(tmp), products=products)
        with LocalExchange(market_id="loadtest", operator_token=TOKEN, gate="rolling",
                           gate_rolling_minutes=60) as ex:
            register_members(ex.http_url, TOKEN, _members(users, seed))
            return run_locust(ex.ws_url, users=users, spawn_rate=spawn_rate, duration=duration, seed=seed,
                              members=users, workdir=Path(tmp), products=products)


def format_report(r: dict) -> str:
    lines = [f"Locust: {r['users']} users for {r['duration']} against {r['url']}",
             f"{'request':28s} {'count':>8} {'fail':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for name, s in sorted(r["stats"].items(), key=lambda kv: (kv[0] == "Aggregated", kv[0])):
        lines.append(f"{name:28s} {s['requests']:>8} {s['failures']:>6} {s['rps']:>8} {s['p50_ms']:>8g} "
                     f"{s['p95_ms']:>8g} {s['p99_ms']:>8g}")
    for f in r["failures"]:
        lines.append(f"  failure: {f['name']}: {f['error']} x{f['occurrences']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=int(os.environ.get("USERS", 20)))
    ap.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all at once)")
    ap.add_argument("--duration", default=os.environ.get("DURATION", "15s"), help="e.g. 15s, 2m")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--products", type=int, default=6, help="open products the users trade")
    ap.add_argument("--url", help="a running exchange (ws://HOST:PORT/ws) instead of a local one")
    ap.add_argument("--operator-token", help="with --url: register the users' members there")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(users=a.users, spawn_rate=a.spawn_rate or a.users, duration=a.duration, seed=a.seed, url=a.url,
            operator_token=a.operator_token, products=a.products)
    print(json.dumps(r) if a.json else format_report(r))
    agg = r["stats"].get("Aggregated", {})
    return 0 if agg.get("requests", 0) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
