"""The command line of the client and the bots: human units parsed exactly."""

from __future__ import annotations

import argparse

import pytest

from clients.cli import add_commands, parse_price, parse_quantity

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
