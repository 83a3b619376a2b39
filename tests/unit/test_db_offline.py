"""The database edge without a server: where the migrations are, a configured URL that
starts nothing, stale handle files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.pgproc import dead_pid

from exchange.runtime.config import load_settings
from exchange.runtime.db import alembic_dir, clear_stale_handles, database

pytestmark = pytest.mark.unit


def test_alembic_dir_is_the_repo_folder() -> None:
    d = alembic_dir()
    assert (d / "env.py").is_file()
    assert (d / "versions" / "0001_initial.py").is_file()


def test_database_uses_configured_url(tmp_path: Path) -> None:
    settings = load_settings(database_url="postgresql://u:p@db.invalid/x", data_dir=tmp_path)
    with database(settings) as dsn:
        assert dsn == "postgresql://u:p@db.invalid/x"
    assert not (tmp_path / "pg").exists()  # no embedded server was started


def test_clear_stale_handles(tmp_path: Path) -> None:
    handles = tmp_path / ".handle_pids.json"
    gone = dead_pid()
    handles.write_text(json.dumps([gone, os.getpid()]))
    assert clear_stale_handles(tmp_path) == [gone]
    assert json.loads(handles.read_text()) == [os.getpid()]
    handles.write_text(json.dumps([gone]))
    assert clear_stale_handles(tmp_path) == [gone]
    assert not handles.exists()
    handles.write_text("not json")
    clear_stale_handles(tmp_path)
    assert not handles.exists()
