"""A local JSON-RPC dev node: Hardhat's network (npm ``hardhat``, pinned in
contracts/package.json, installed by ``make`` with ``npm ci`` in contracts/).

For the tests against a real node and ``voltbourse bench settlement --rpc hardhat``; the
exchange itself never starts one. ``contracts/hardhat.config.js`` fixes what the
settlement needs: chain id 1337 (the signing domain's default), the cancun hardfork
(MCOPY, transient storage), a block per transaction at once, no base fee. The node
keeps everything in memory: a stopped node is gone, and a new one starts empty.

It runs the installed ``contracts/node_modules/.bin/hardhat`` with node (never ``npx``,
which could try to download a missing package), bound to 127.0.0.1 on a free port.
Its funded accounts are Hardhat's well-known development keys (:data:`DEV_KEYS`; anvil
has the same ones): public, for a local node only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from settlement.compiler import ROOT

CONTRACTS = ROOT / "contracts"
HARDHAT = CONTRACTS / "node_modules" / ".bin" / "hardhat"
CONFIG = CONTRACTS / "hardhat.config.js"
CHAIN_ID = 1337

#: the first accounts of the node (mnemonic "test test ... junk"), 10 000 ETH each
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
)
#: the key `bench settlement --rpc` signs with unless given one: account #0 of a dev node
DEV_OPERATOR_KEY = DEV_KEYS[0]


class DevNodeUnavailable(RuntimeError):
    """node or the npm hardhat package is missing (run `make venv`), or the node did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rpc_call(url: str, method: str, params: list | None = None, timeout: float = 10.0) -> Any:
    """One JSON-RPC call; the result, or RuntimeError with the node's error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


class DevNode:
    """``with DevNode() as node: node.url`` — a Hardhat node on 127.0.0.1, stopped on exit.

    :meth:`start` waits until it answers ``eth_chainId`` (and checks it is 1337);
    :meth:`stop` ends it (SIGTERM, then SIGKILL). :meth:`restart` is a node restarted
    empty on the same port (same chain id, nothing deployed)."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None, start_timeout: float = 60.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @staticmethod
    def check_installed() -> None:
        """Raise DevNodeUnavailable saying what is missing."""
        if shutil.which("node") is None:
            raise DevNodeUnavailable("node is not installed (the Hardhat dev node needs Node.js)")
        if not HARDHAT.exists():
            raise DevNodeUnavailable(f"{HARDHAT} is missing: run `make venv` (npm ci in contracts/)")
        if not CONFIG.exists():
            raise DevNodeUnavailable(f"{CONFIG} is missing")

    def start(self) -> DevNode:
        self.check_installed()
        env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            ["node", str(HARDHAT.resolve()), "--config", str(CONFIG), "node", "--hostname", "127.0.0.1", "--port", str(self.port)],
            cwd=CONTRACTS, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise DevNodeUnavailable(f"the Hardhat node exited with status {code} before answering"
                                         + (f" (log: {self.log_path})" if self.log_path else ""))
            try:
                chain_id = int(rpc_call(self.url, "eth_chainId", timeout=2.0), 16)
                break
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise DevNodeUnavailable(f"the Hardhat node did not answer at {self.url} within "
                                             f"{self.start_timeout:.0f} s") from None
                time.sleep(0.1)
        if chain_id != CHAIN_ID:
            self.stop()
            raise DevNodeUnavailable(f"the Hardhat node reports chain id {chain_id}, not {CHAIN_ID} ({CONFIG})")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None

    def restart(self) -> DevNode:
        """Stop and start again on the same port: an empty node, as one restarted without its state."""
        self.stop()
        return self.start()

    # ------------------------------------------------------------------ dev-node RPCs
    def call(self, method: str, *params: Any) -> Any:
        return rpc_call(self.url, method, list(params))

    def snapshot(self) -> str:
        """``evm_snapshot``: an id to go back to with :meth:`revert`."""
        return str(self.call("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        """``evm_revert``: the node loses every block after the snapshot (a rollback)."""
        if self.call("evm_revert", snapshot_id) is not True:
            raise RuntimeError(f"evm_revert {snapshot_id} refused")

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.call("evm_mine")

    def set_balance(self, address: str, wei: int) -> None:
        """``hardhat_setBalance``: gas money for an account (members' own transactions)."""
        self.call("hardhat_setBalance", address, hex(wei))

    def __enter__(self) -> DevNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
