"""The command line of the client and the bots: human units parsed exactly."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from clients.cli import a_trades, add_commands, parse_price, parse_quantity
from clients.sdk.models import MyTrade

pytestmark = pytest.mark.unit


def test_cli_parses_human_units_exactly():
    assert parse_price("85.50") == 8550 and parse_price("-12") == -1200 and parse_price("0.01") == 1
    with pytest.raises(argparse.ArgumentTypeError):
        parse_price("85.555")
    assert parse_quantity("2500") == 2500 and parse_quantity("2.5kWh") == 2500 and parse_quantity("1MWh") == 10**6
    for bad in ("0.5", "-3", "abc", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_quantity(bad)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_commands(sub, None)
    a = parser.parse_args(["client", "--seed", "1", "place", "P-1", "sell", "90.25", "3kWh", "--sign"])
    assert (a.price, a.quantity, a.sign, a.action) == (9025, 3000, True, "place")
    b = parser.parse_args(["bots", "run", "--members", "200", "--speed", "600", "--duration", "60"])
    assert (b.members, b.speed, b.duration, b.strategy) == (200, 600, 60, "community")


class _Trades:
    """A client whose member has ``n`` trades, seq 10, 20, ...: my_trades as the server pages them."""

    def __init__(self, n: int) -> None:
        self.all = [MyTrade(trade_id=i, seq=10 * i, product_id="20261122T1100Z-60", side="buy", price=8550,
                            quantity=1000, ts="2026-11-21T08:00:00.000001Z") for i in range(1, n + 1)]

    async def my_trades(self, product=None, after=0, limit=100):
        return [t for t in self.all if t.seq > after][:limit]


def test_client_trades_says_where_the_next_page_starts(capsys):
    args = argparse.Namespace(product=None, after=0, limit=3, json=False)
    asyncio.run(a_trades(_Trades(5), args))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1] == "... the first 3 after seq 0; more: --after 30"
    asyncio.run(a_trades(_Trades(5), argparse.Namespace(product=None, after=30, limit=3, json=False)))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("#" in line for line in out)  # the last page: no hint
