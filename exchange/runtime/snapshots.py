"""Snapshots: restarts in bounded time.

A snapshot is the engine's complete state (:meth:`MarketEngine.export_state`) after
journal command ``cmd_seq``, stored in PostgreSQL (``snapshots``) as zlib-compressed
JSON with two checks: ``digest`` (SHA-256 of the stored bytes) and ``state_hash``
(the engine's own hash of the state). Recovery loads the newest snapshot that passes
both checks — the restored engine must hash to ``state_hash`` — and replays only the
journal commands after it; a snapshot that fails is skipped for the one before it,
and with none the whole journal is replayed. The journal before a snapshot stays
(audit) but is not replayed.

Snapshots are written off the order path by :class:`Snapshotter`: it keeps a
*shadow* engine of its own, seeded from the live engine once at start (before any
command), and follows the committed journal from the database through the readers'
pool, checking that the shadow reproduces every stored event. The shadow's replay
and the state's encoding run in a worker thread, so the event loop that serves the
market is paused for at most the interpreter's switch interval (5 ms) at a time;
the live engine is never touched. ``voltbourse snapshots verify`` replays the whole
journal and checks every snapshot against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import zlib
from dataclasses import dataclass

import asyncpg

from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import command_from_dict, event_to_dict
from exchange.runtime.journal import Journal, ReplayMismatch

log = logging.getLogger(__name__)


class SnapshotInvalid(ValueError):
    """A stored snapshot fails its checks (bytes, layout version, state hash or rules)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    cmd_seq: int
    seq: int
    state_hash: str
    digest: str
    state: bytes


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    cmd_seq: int
    seq: int
    state_hash: str
    bytes: int
    created_at: object


def encode(engine: MarketEngine, cmd_seq: int) -> Encoded:
    """The engine's state after journal command ``cmd_seq``, ready to store (CPU-bound: run
    it in a thread when a market is live)."""
    blob = zlib.compress(json.dumps(engine.export_state(), separators=(",", ":")).encode(), 1)
    return Encoded(cmd_seq, engine.seq, engine.state_hash(), hashlib.sha256(blob).hexdigest(), blob)


def decode(state: bytes, digest: str, state_hash: str, config: MarketConfig | None = None) -> MarketEngine:
    """The engine a stored snapshot describes, after checking it; ``config``: the market's
    stored rules, which the snapshot must have been taken under."""
    if hashlib.sha256(state).hexdigest() != digest:
        raise SnapshotInvalid("the stored bytes do not match their digest")
    try:
        engine = MarketEngine.restore(json.loads(zlib.decompress(state)))
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise SnapshotInvalid(f"the state cannot be restored: {exc}") from exc
    if engine.state_hash() != state_hash:
        raise SnapshotInvalid("the restored state does not hash to the stored state hash")
    if config is not None and engine.config != config:
        raise SnapshotInvalid("the snapshot was taken under other market rules")
    return engine


def apply(engine: MarketEngine, rows: list[tuple[int, dict, list]]) -> None:
    """Feed journal rows to a (shadow) engine, checking it reproduces every stored event."""
    for cmd_seq, cmd, stored in rows:
        produced = [event_to_dict(ev) for ev in engine.process(command_from_dict(cmd))]
        if produced != stored:
            raise ReplayMismatch(f"command {cmd_seq}: replay produced {produced!r}, journal has {stored!r}")


async def catch_up(journal: Journal, engine: MarketEngine, cursor: int, upto: int | None = None,
                   chunk: int = 5000) -> int:
    """Feed ``engine`` (at journal command ``cursor``) the journal's next commands, up to
    ``upto`` (None: its end), ``chunk`` rows per query, each chunk in a worker thread and
    checked against the stored events; returns the last command applied."""
    while upto is None or cursor < upto:
        rows = await journal.command_rows(cursor, chunk if upto is None else min(chunk, upto - cursor))
        if not rows:
            break
        await asyncio.to_thread(apply, engine, rows)
        cursor = rows[-1][0]
    return cursor


class SnapshotStore:
    def __init__(self, pool: asyncpg.Pool, market_id: str) -> None:
        self.pool = pool
        self.market_id = market_id

    async def write(self, s: Encoded) -> None:
        await self.pool.execute(
            "INSERT INTO snapshots (market_id, cmd_seq, seq, state_hash, digest, state, bytes) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (market_id, cmd_seq) DO NOTHING",
            self.market_id, s.cmd_seq, s.seq, s.state_hash, s.digest, s.state, len(s.state))

    async def list(self) -> list[SnapshotInfo]:
        """Every snapshot of the market, oldest first (without their states)."""
        rows = await self.pool.fetch(
            "SELECT cmd_seq, seq, state_hash, bytes, created_at FROM snapshots WHERE market_id = $1 "
            "ORDER BY cmd_seq", self.market_id)
        return [SnapshotInfo(r["cmd_seq"], r["seq"], r["state_hash"], r["bytes"], r["created_at"]) for r in rows]

    async def load(self, cmd_seq: int, config: MarketConfig | None = None) -> MarketEngine:
        row = await self.pool.fetchrow(
            "SELECT state, digest, state_hash FROM snapshots WHERE market_id = $1 AND cmd_seq = $2",
            self.market_id, cmd_seq)
        if row is None:
            raise SnapshotInvalid(f"no snapshot at command {cmd_seq}")
        return await asyncio.to_thread(decode, bytes(row["state"]), row["digest"], row["state_hash"], config)

    async def newest_valid(self, config: MarketConfig, upto_cmd_seq: int | None = None) -> tuple[MarketEngine, int] | None:
        """The newest snapshot (at or before ``upto_cmd_seq``) that passes its checks, restored."""
        for info in reversed(await self.list()):
            if upto_cmd_seq is not None and info.cmd_seq > upto_cmd_seq:
                continue
            try:
                return await self.load(info.cmd_seq, config), info.cmd_seq
            except SnapshotInvalid as exc:
                log.error("market %s: snapshot at command %d is not usable (%s); trying an older one",
                          self.market_id, info.cmd_seq, exc)
        return None


async def recover(journal: Journal, store: SnapshotStore | None, engine: MarketEngine,
                  verify: bool = True) -> tuple[MarketEngine, int, int]:
    """The market's engine rebuilt from the newest valid snapshot and the journal after it
    (or the whole journal): (engine, last cmd_seq, cmd_seq of the snapshot used or 0).
    ``engine`` is the fresh engine with the market's rules, used when there is no snapshot."""
    start = 0
    if store is not None:
        last_cmd, _ = await journal.last_positions()
        found = await store.newest_valid(engine.config, last_cmd)
        if found is not None:
            engine, start = found
    cmd_seq = await journal.replay(engine, verify=verify, after_cmd_seq=start)
    return engine, cmd_seq, start


class Snapshotter:
    """Writes a snapshot every ``every_commands`` journal commands, or after ``interval_s``
    when there are new ones, from a shadow engine that follows the committed journal."""

    def __init__(self, journal: Journal, store: SnapshotStore, *, every_commands: int = 100_000,
                 interval_s: float = 3600.0, poll_s: float = 1.0, chunk: int = 5000) -> None:
        self.journal = journal  # on the readers' pool
        self.store = store
        self.every = every_commands
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.chunk = chunk
        self.shadow: MarketEngine | None = None
        self._config = MarketConfig()
        self.cursor = 0  # last journal command applied to the shadow
        self.last_snapshot = 0  # cmd_seq of the newest snapshot written or found
        self.written = 0
        self.failed: BaseException | None = None
        self._wake = asyncio.Event()

    def seed(self, config: MarketConfig, snapshot_cmd_seq: int) -> None:
        """Where the shadow starts: the snapshot recovery used (0: none, an engine with the
        market's rules). It is loaded in the background (:meth:`start_shadow`), so a restart
        costs nothing more; the shadow then catches up with the journal like any consumer."""
        self._config = config
        self.cursor = self.last_snapshot = snapshot_cmd_seq

    async def start_shadow(self) -> None:
        if self.shadow is not None:
            return
        if self.cursor:
            self.shadow = await self.store.load(self.cursor, self._config)
        else:
            self.shadow = MarketEngine(self._config)

    def wake(self) -> None:
        self._wake.set()

    async def step(self, force: bool = False) -> bool:
        """Catch the shadow up with the journal (one chunk) and write a snapshot when due.
        True if a snapshot was written."""
        await self.start_shadow()
        shadow = self.shadow
        assert shadow is not None
        before = self.cursor
        self.cursor = await catch_up(self.journal, shadow, before, before + self.chunk, self.chunk)
        behind = self.cursor - before >= self.chunk  # journal commands are numbered without gaps
        new = self.cursor - self.last_snapshot
        if new <= 0 or (behind and not force):
            return False
        if not (force or (self.every and new >= self.every) or self._age() >= self.interval_s):
            return False
        t = time.perf_counter()
        enc = await asyncio.to_thread(encode, shadow, self.cursor)
        await self.store.write(enc)
        self.last_snapshot, self.written = self.cursor, self.written + 1
        self._last_time = time.monotonic()
        log.info("market %s: snapshot at command %d (%d bytes, %.2fs)", self.store.market_id, self.cursor,
                 len(enc.state), time.perf_counter() - t)
        return True

    _last_time = 0.0

    def _age(self) -> float:
        if not self._last_time:
            self._last_time = time.monotonic()
        return time.monotonic() - self._last_time

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                if self.cursor - self.last_snapshot < self.chunk:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    except TimeoutError:
                        pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - snapshots stop; the market goes on (recovery replays more)
            self.failed = exc
            log.critical("market %s: snapshots stopped: %r", self.store.market_id, exc)


@dataclass(frozen=True, slots=True)
class Verified:
    cmd_seq: int
    replay_hash: str  # the state hash a full replay reaches at this command
    stored_hash: str
    restored: bool  # the snapshot's bytes restore to the stored hash
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def verify_chain(journal: Journal, store: SnapshotStore, config: MarketConfig,
                       chunk: int = 5000) -> tuple[list[Verified], int]:
    """Replay the whole journal from its first command and check every snapshot against it:
    the replayed state at the snapshot's command must hash to its stored hash, and its bytes
    must restore to that state. Returns the checks and the last command replayed."""
    engine = MarketEngine(config)
    cursor = 0
    out: list[Verified] = []
    for info in await store.list():
        cursor = await catch_up(journal, engine, cursor, info.cmd_seq, chunk)
        replay_hash = engine.state_hash()
        problem = None
        restored = False
        if cursor != info.cmd_seq:
            problem = f"the journal ends at command {cursor}, before the snapshot"
        elif replay_hash != info.state_hash:
            problem = "the full replay reaches another state than the snapshot's hash"
        try:
            restored = (await store.load(info.cmd_seq, config)).state_hash() == replay_hash
        except SnapshotInvalid as exc:
            problem = problem or str(exc)
        if not restored and problem is None:
            problem = "the snapshot does not restore to the replayed state"
        out.append(Verified(info.cmd_seq, replay_hash, info.state_hash, restored, problem))
    return out, await catch_up(journal, engine, cursor, None, chunk)


async def take(journal: Journal, store: SnapshotStore, config: MarketConfig) -> Encoded:
    """A snapshot of the journal's end now (from the newest valid snapshot and the tail;
    safe beside a running market: it only reads the journal)."""
    found = await store.newest_valid(config)
    engine, cursor = found if found is not None else (MarketEngine(config), 0)
    cursor = await catch_up(journal, engine, cursor)
    if not cursor:
        raise SnapshotInvalid("the journal is empty: nothing to snapshot")
    enc = await asyncio.to_thread(encode, engine, cursor)
    await store.write(enc)
    return enc
