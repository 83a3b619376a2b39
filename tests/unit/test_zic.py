"""ZI-C allocative efficiency on the real engine (Gode & Sunder 1993), and its bench command."""

from __future__ import annotations

import argparse
import json
import statistics
from fractions import Fraction

import pytest

from clients.bots.zic import MARKETS, Schedules, random_market, run_bench, run_session
from clients.community import cli as community_cli

pytestmark = pytest.mark.unit

E = 100  # ticks per EUR/MWh


def test_equilibrium_of_a_tiny_market():
    s = Schedules("tiny", buyers=((150 * E, 100 * E), (120 * E,)), sellers=((50 * E, 110 * E), (130 * E,)))
    # values 150, 120, 100; costs 50, 110, 130: two units trade, surplus 100 + 10
    q, surplus, lo, hi = s.equilibrium()
    assert (q, surplus) == (2, 110 * E)
    assert (lo, hi) == (110 * E, 120 * E)
    with pytest.raises(ValueError):
        Schedules("bad", buyers=((100 * E, 150 * E),), sellers=((50 * E,),))


def test_session_is_deterministic_and_consistent():
    a = run_session(MARKETS["symmetric"], seed=5, periods=2)
    b = run_session(MARKETS["symmetric"], seed=5, periods=2)
    assert (a.realised, a.trades, a.prices, a.commands) == (b.realised, b.trades, b.prices, b.commands)
    assert 0 < a.realised <= a.maximum
    assert a.loss_trades == 0
    assert all(MARKETS["symmetric"].price_min <= p <= MARKETS["symmetric"].price_max for p in a.prices)


@pytest.mark.slow
def test_zi_c_efficiency_is_in_the_gode_sunder_band():
    """Median over 12 sessions (3 per market) >= 97 %; no trade ever at a loss."""
    results = [run_session(m, seed=1000 + k, periods=6) for k in range(3) for m in MARKETS.values()]
    effs = [r.efficiency for r in results]
    assert all(isinstance(e, Fraction) and e <= 1 for e in effs)
    assert statistics.median(effs) >= Fraction(97, 100), [float(e) for e in effs]
    assert min(effs) >= Fraction(90, 100)
    assert sum(r.loss_trades for r in results) == 0


def test_zi_u_is_clearly_worse():
    """The counter-case: unconstrained traders trade at a loss and waste surplus, on the same engine."""
    results = [run_session(m, seed=2000 + k, periods=6, mode="zi-u") for k in range(3) for m in MARKETS.values()]
    effs = [r.efficiency for r in results]
    assert statistics.median(effs) < Fraction(90, 100), [float(e) for e in effs]
    assert sum(r.loss_trades for r in results) > 0


def test_random_markets_also_reach_high_efficiency():
    effs = [run_session(random_market(s), seed=s, periods=4).efficiency for s in range(6)]
    assert statistics.median(effs) >= Fraction(95, 100), [float(e) for e in effs]


def test_bench_efficiency_command(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench_sub = sub.add_parser("bench").add_subparsers(dest="kind")
    community_cli.add_commands(sub, bench_sub)
    args = parser.parse_args(["bench", "efficiency", "--json", "--sessions", "4", "--periods", "2"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sessions"] == 4 and out["mode"] == "zi-c" and out["loss_trades"] == 0
    assert 0 < out["efficiency_min_pct"] <= out["efficiency_median_pct"] <= out["efficiency_max_pct"] <= 100
    assert set(out) >= {"trades", "price_rmsd_eur_mwh", "equilibrium_trades"}
    assert run_bench(sessions=4, periods=2) | {"seconds": 0} == out | {"seconds": 0}


def test_community_profile_command(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench_sub = sub.add_parser("bench").add_subparsers(dest="kind")
    community_cli.add_commands(sub, bench_sub)
    args = parser.parse_args(["community", "profile", "--members", "5", "--date", "2026-06-21", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == 5 and out["products"] == 24 and len(out["per_member"]) == 5
    assert out["consumption_wh"] == sum(r["consumption_wh"] for r in out["per_member"])
    assert out["generation_wh"] == sum(h["generation_wh"] for h in out["hourly"])
    args = parser.parse_args(["community", "profile", "--members", "3", "--date", "2026-06-21"])
    assert args.func(args) == 0
    assert "self-sufficiency without trading" in capsys.readouterr().out
