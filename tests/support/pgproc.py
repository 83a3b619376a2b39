"""Helpers around embedded PostgreSQL processes (tests of exchange.runtime.db)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil


def alembic_head() -> str:
    """The migrations' head revisions (one per branch), sorted and comma-separated (as
    exchange.runtime.db.current_revision reports them)."""
    from alembic.script import ScriptDirectory

    from exchange.runtime.db import alembic_config

    return ",".join(sorted(ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_heads()))


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def postmaster_pid(pgdata: Path) -> int | None:
    path = pgdata / "postmaster.pid"
    return int(path.read_text().splitlines()[0]) if path.exists() else None


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def kill_leftover(pgdata: Path) -> None:
    pid = postmaster_pid(pgdata)
    if pid and psutil.pid_exists(pid):
        psutil.Process(pid).kill()
        wait_gone(pid)
