"""Snapshots: restarts in bounded time.

A snapshot is the engine's complete state (:meth:`MarketEngine.export_state`) after
journal command ``cmd_seq``, stored in PostgreSQL (``snapshots``) as zlib-compressed
JSON with two checks: ``digest`` (SHA-256 of the stored bytes) and ``state_hash``
(the engine's own hash of the state). Recovery loads the newest snapshot that passes
both checks — the restored engine must hash to ``state_hash`` — and replays only the
journal commands after it; a snapshot that fails is skipped for the one before it,
and with none the whole journal is replayed. The journal before a snapshot stays
(audit) but is not replayed.

Snapshots are written off the order path by :class:`Snapshotter`: between two groups of
commands the market's engine step forks, and the child process encodes its copy-on-write
image of the engine on a CPU of its own; the market pauses only for the fork (a few ms).
``voltbourse snapshots verify`` replays the whole journal and checks every snapshot
against it; ``snapshots take`` builds one from the journal alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hashlib
import json
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

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
    """Feed journal rows to an engine, checking it reproduces every stored event."""
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
    when there are new ones, from a copy-on-write image of the live engine.

    The market's engine step asks :meth:`due` between two groups of commands; when a
    snapshot is due it calls :meth:`capture`, which forks. The child process holds the
    engine exactly as it is after journal command ``cmd_seq`` and encodes it (export, JSON,
    zlib, digest, state hash) on a CPU of its own, then sends the bytes back through a pipe
    and exits; the market is paused only for the fork itself (``fork_ms``). The parent
    checks the bytes against their digest, waits until ``cmd_seq`` is committed, and stores
    the snapshot through the readers' pool. Nothing runs beside the market between
    snapshots. A child that fails, dies or exceeds ``timeout_s`` leaves nothing stored (the
    previous snapshot stays the newest); the next try comes ``retry_s`` later."""

    #: fork exists on the platforms the server runs on (Linux, macOS); elsewhere no
    #: snapshots are taken and recovery replays the journal after the newest stored one.
    supported = hasattr(os, "fork")

    def __init__(self, store: SnapshotStore, *, every_commands: int = 100_000, interval_s: float = 3600.0,
                 timeout_s: float = 600.0, retry_s: float = 60.0) -> None:
        self.store = store
        self.every = every_commands
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.last_snapshot = 0  # cmd_seq of the newest snapshot written or recovered from
        self.written = 0
        self.failures = 0
        self.failed: BaseException | None = None  # the last attempt's failure, until one succeeds
        self.pid: int | None = None  # the child encoding a snapshot now
        self.fork_ms = 0.0  # how long the last fork paused the market
        self._task: asyncio.Task | None = None
        self._last_time = time.monotonic()
        self._next_try = 0.0

    def seed(self, snapshot_cmd_seq: int) -> None:
        """The snapshot recovery started from (0: none): the next one is due
        ``every_commands`` after it (at once, if recovery replayed more than that)."""
        self.last_snapshot = snapshot_cmd_seq
        self._last_time = time.monotonic()

    @property
    def busy(self) -> bool:
        return self._task is not None

    def due(self, cmd_seq: int) -> bool:
        """Whether to snapshot the state after journal command ``cmd_seq`` now."""
        new = cmd_seq - self.last_snapshot
        if new <= 0 or self._task is not None or not self.supported:
            return False
        now = time.monotonic()
        if now < self._next_try:
            return False
        return (bool(self.every) and new >= self.every) or now - self._last_time >= self.interval_s

    def capture(self, engine: MarketEngine, cmd_seq: int, now_us: int, committed: Callable[[], int]) -> None:
        """Fork a child that encodes ``engine`` — the state after journal command ``cmd_seq``,
        whose time is ``now_us`` — and store what it sends once ``committed()`` (the last
        committed journal command; negative once the market stopped) reaches ``cmd_seq``. Call between two commands, from the
        task that owns the engine."""
        r, w = os.pipe()
        parent = os.getpid()
        t = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(r)
            os.close(w)
            self._failure(exc)
            return
        if pid == 0:  # the child: never returns
            _encode_in_child(engine, cmd_seq, now_us, w, parent)
        self.fork_ms = (time.perf_counter() - t) * 1000
        os.close(w)
        self.pid = pid
        self._task = asyncio.get_running_loop().create_task(
            self._collect(pid, r, cmd_seq, committed), name=f"snapshot-{self.store.market_id}")

    async def _collect(self, pid: int, r: int, cmd_seq: int, committed: Callable[[], int]) -> None:
        t = time.perf_counter()
        try:
            data = await _read_pipe(r, pid, self.timeout_s)
            status = await _reap(pid)
            enc = _parse(data, cmd_seq)
            if status != 0:
                raise SnapshotInvalid(f"the snapshot process exited with status {status}")
            deadline = time.monotonic() + self.timeout_s
            while (done := committed()) < cmd_seq:  # never store a state the journal may not hold
                if done < 0:
                    raise SnapshotInvalid(f"the market stopped before command {cmd_seq} was committed")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"command {cmd_seq} was not committed in {self.timeout_s:.0f}s")
                await asyncio.sleep(0.005)
            await self.store.write(enc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - snapshots stop for a while; the market goes on
            self._failure(exc)
        else:
            self.last_snapshot, self.written, self.failed = cmd_seq, self.written + 1, None
            self._last_time = time.monotonic()
            log.info("market %s: snapshot at command %d (%d bytes; fork %.1f ms, %.2fs in all)",
                     self.store.market_id, cmd_seq, len(enc.state), self.fork_ms, time.perf_counter() - t)
        finally:
            self.pid = None
            self._task = None

    def _failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.failed = exc
        self._next_try = time.monotonic() + self.retry_s
        log.error("market %s: snapshot failed (%s); next try in %.0fs, recovery replays from the previous one",
                  self.store.market_id, exc, self.retry_s)

    async def close(self) -> None:
        """Stop a snapshot in progress (nothing of it is stored)."""
        task, pid = self._task, self.pid
        if pid is not None:
            _kill(pid)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if pid is not None:
            await _reap(pid)


def _encode_in_child(engine: MarketEngine, cmd_seq: int, now_us: int, w: int, parent: int) -> NoReturn:
    """The forked child: encode the engine it inherited, write header and bytes to ``w``,
    exit. It touches nothing of the parent's (no event loop, connections or logging)."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)
        os.closerange(3, w)  # the parent's sockets: a restarted server can bind at once
        os.closerange(w + 1, _max_fd())
        gc.disable()  # the state is read once: no collections to touch (and copy) every page
        engine.now = now_us  # the time of command cmd_seq (a rejection since may have moved it)
        enc = encode(engine, cmd_seq)
        header = json.dumps({"cmd_seq": enc.cmd_seq, "seq": enc.seq, "state_hash": enc.state_hash,
                             "digest": enc.digest, "bytes": len(enc.state)}).encode()
        view = memoryview(header + b"\n" + enc.state)
        while view:
            view = view[os.write(w, view):]
        code = 0
    except BaseException as exc:  # noqa: BLE001 - said on stderr; the parent sees no state and retries later
        os.write(2, f"snapshot process for command {cmd_seq} failed: {exc!r}\n".encode())
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Linux: the child gets SIGKILL if the server dies (kill -9) while it encodes. A server
    that died between the fork and this call sends nothing: then the child is already
    someone else's (its parent id changed) and stops here."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _read_pipe(r: int, pid: int, timeout_s: float) -> bytes:
    """Everything the child writes to ``r`` until it closes it; the child is killed if it
    takes longer than ``timeout_s``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(r, "rb", buffering=0))
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    except TimeoutError:
        _kill(pid)
        raise TimeoutError(f"the snapshot process took longer than {timeout_s:.0f}s; killed") from None
    finally:
        transport.close()


async def _reap(pid: int) -> int | None:
    """The child's exit status (its return code, or minus the signal that killed it)."""
    for _ in range(1000):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its bytes are checked anyway
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(0.01)
    _kill(pid)
    return None


def _parse(data: bytes, cmd_seq: int) -> Encoded:
    head, sep, state = data.partition(b"\n")
    if not sep:
        raise SnapshotInvalid(f"the snapshot process sent {len(data)} bytes and no state")
    try:
        h = json.loads(head)
        enc = Encoded(int(h["cmd_seq"]), int(h["seq"]), str(h["state_hash"]), str(h["digest"]), state)
        size = int(h["bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotInvalid(f"the snapshot process sent a bad header: {exc}") from exc
    if enc.cmd_seq != cmd_seq or size != len(state) or hashlib.sha256(state).hexdigest() != enc.digest:
        raise SnapshotInvalid(f"the snapshot process sent {len(state)} of {size} bytes for command "
                              f"{enc.cmd_seq} (expected {cmd_seq}), or bytes that do not match their digest")
    return enc


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
