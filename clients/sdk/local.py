"""A throw-away local exchange for bots, load tests and demos.

:class:`LocalExchange` runs ``voltbourse serve`` as a subprocess on 127.0.0.1
(its own process and event loop, like production) with a fresh data directory
under the per-user data dir (never inside the checkout; ``$VOLTBOURSE_DATA_DIR``
if set): the server starts its embedded PostgreSQL there and migrates it, as
``voltbourse serve`` always does. It waits until ``/ready`` and on exit stops
the server (which stops its database) and deletes the directory. Members are
registered over the operator REST API (:func:`register_members`), exactly as an
operator would. Blocking start/stop (call it before/after the event loop, or
from a thread).

Only the standard library and platformdirs here: the server is a separate
process, so the SDK needs none of its dependencies (it must be installed where
a local exchange is started, of course).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import platformdirs

__all__ = ["LocalExchange", "data_root", "free_port", "register_members"]


#: ``voltbourse`` (its module, run by this interpreter: works from a checkout without the console
#: script on PATH). A command line, not an import: the SDK does not depend on the server's code.
SERVER_COMMAND = (sys.executable, "-m", "exchange.tools.cli")


def data_root() -> Path:
    """Where local exchanges make their directories: ``$VOLTBOURSE_DATA_DIR``, else the per-user
    data dir the server defaults to (e.g. ~/.local/share/voltbourse)."""
    env = os.environ.get("VOLTBOURSE_DATA_DIR")
    return Path(env).expanduser() if env else platformdirs.user_data_path("voltbourse")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalExchange:
    """``with LocalExchange(market_id="x", clock="sim", sim_speed=600) as ex: ex.ws_url ...``

    ``settings``: extra ``VOLTBOURSE_*`` settings (lower-case names, e.g.
    ``gate="rolling"``, ``sim_start="2026-11-21T21:50:00Z"``).
    """

    def __init__(self, *, market_id: str = "local", operator_token: str = "local-operator-token",
                 log_level: str = "WARNING", **settings) -> None:
        self.market_id = market_id
        self.operator_token = operator_token
        self.log_level = log_level
        self.settings = settings
        self.port = free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.proc: subprocess.Popen | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> LocalExchange:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "server.log"

    def start(self, timeout: float = 90) -> None:
        base = data_root()
        base.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="local-exchange-", dir=base))
        try:
            env = dict(os.environ, VOLTBOURSE_DATA_DIR=str(self._tmp), VOLTBOURSE_PORT=str(self.port),
                       VOLTBOURSE_HOST="127.0.0.1", VOLTBOURSE_OPERATOR_TOKEN=self.operator_token,
                       VOLTBOURSE_MARKET_ID=self.market_id)
            env.pop("VOLTBOURSE_CONFIG", None)
            env.pop("VOLTBOURSE_DATABASE_URL", None)  # the server's own embedded PostgreSQL in the fresh directory
            for k, v in self.settings.items():
                env[f"VOLTBOURSE_{k.upper()}"] = str(v)
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen([*SERVER_COMMAND, "--log-level", self.log_level, "serve"], env=env,
                                             stdout=log, stderr=subprocess.STDOUT)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the exchange exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the exchange was not ready in time")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def register_members(http_url: str, token: str, members: list[dict], timeout: float = 30) -> tuple[int, int]:
    """POST each member (``MemberIn`` fields) to ``/api/operator/members``; a member that exists
    already (409 ``MEMBER_EXISTS``) is left as it is. Returns (created, existing). Blocking."""
    created = existing = 0
    for m in members:
        req = urllib.request.Request(f"{http_url}/api/operator/members", data=json.dumps(m).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                created += 1
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if exc.code == 409 and "MEMBER_EXISTS" in body:
                existing += 1
                continue
            raise RuntimeError(f"registering {m.get('address')} failed: HTTP {exc.code} {body}") from None
    return created, existing
