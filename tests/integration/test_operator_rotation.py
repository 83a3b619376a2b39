"""Rotating the operator key of a market's settlement contracts from the command line
(``voltbourse settlement operator show|propose|accept``), on the default chain stored on
disk: the configured key proposes, a stranger's acceptance is refused, the new key takes
over both contracts, and settlement goes on under it (reconcile OK). Real parts: the CLI
as a process, PostgreSQL, py-evm over SQLite, the contracts compiled from source."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from eth_account import Account
from support.market import open_test_market
from support.settlement import MEMBER_KEYS, make_worker, register_and_fund, trade

from settlement.chain import Chain
from settlement.reconcile import reconcile

pytestmark = pytest.mark.integration

NEW = Account.from_key("0x" + "5e" * 32)
STRANGER = Account.from_key("0x" + "7a" * 32)


def _cli(env: dict, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    e = dict(env)
    if key is not None:
        e["VOLTBOURSE_NEW_OPERATOR_KEY"] = key
    return subprocess.run([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING",
                           "settlement", "operator", *args], env=e, capture_output=True, text=True, timeout=120)


async def test_the_operator_key_is_rotated_from_the_command_line(pool, pg_dsn, artifacts, tmp_path):
    d = tmp_path / "chain"
    market = await open_test_market(pg_dsn, "rot")
    chain = Chain.in_process(artifacts=artifacts, data_dir=d)
    old = chain.operator.address
    w = make_worker(pool, market, chain)
    try:
        await w.start()
        await register_and_fund(market, w, chain)
        n1 = await trade(market, 12, seed=31)
        await w.drain()
        env = dict(os.environ, VOLTBOURSE_DATABASE_URL=pg_dsn, VOLTBOURSE_MARKET_ID="rot",
                   VOLTBOURSE_CHAIN_DATA_DIR=str(d), VOLTBOURSE_CHAIN_RPC_URL="")
        env.pop("VOLTBOURSE_CHAIN_OPERATOR_KEY", None)  # the in-process chain's own key 0, as the worker's
        busy = _cli(env, "show")
        assert busy.returncode == 1 and "in use" in busy.stderr and "stop the exchange" in busy.stderr
    finally:
        w.close()
        chain.close()  # the exchange stopped: the chain's directory is free

    shown = _cli(env, "show", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["token"] == report["registry"] == {"operator": old, "pending": None}

    bad = _cli(env, "propose", "0x1234")
    assert bad.returncode == 2 and "not an address" in bad.stderr
    proposed = _cli(env, "propose", NEW.address.lower(), "--json")
    assert proposed.returncode == 0, proposed.stderr
    assert json.loads(proposed.stdout)["registry"] == {"operator": old, "pending": NEW.address}

    nokey = _cli(env, "accept")
    assert nokey.returncode == 1 and "VOLTBOURSE_NEW_OPERATOR_KEY" in nokey.stderr
    stranger = _cli(env, "accept", key=STRANGER.key.hex())
    assert stranger.returncode == 1, stranger.stdout + stranger.stderr
    keyfile = tmp_path / "new.key"
    keyfile.write_text(NEW.key.hex() + "\n")
    accepted = _cli(env, "accept", "--key-file", str(keyfile))
    assert accepted.returncode == 0, accepted.stderr
    assert "VOLTBOURSE_CHAIN_OPERATOR_KEY" in accepted.stdout
    report = json.loads(_cli(env, "show", "--json").stdout)
    assert report["token"] == report["registry"] == {"operator": NEW.address, "pending": None}

    # The exchange restarted with the new key: the same deployment, settlement goes on.
    chain = Chain.in_process(NEW.key.hex(), artifacts=artifacts, data_dir=d)
    w2 = make_worker(pool, market, chain)
    try:
        await w2.start()
        assert w2.deployment_id == w.deployment_id
        n2 = await trade(market, 8, seed=32)
        await w2.drain()
        rep = await reconcile(pool, "rot", chain)
        assert rep.ok and rep.trades == n1 + n2 and rep.pending_trades == 0, rep.differences
        assert chain.registry.functions.batchCount().call() == rep.anchored
        for acct in MEMBER_KEYS:
            assert market.engine.accounts[acct.address].collateral == chain.collateral(acct.address)
    finally:
        w2.close()
        chain.close()
        await market.close()
