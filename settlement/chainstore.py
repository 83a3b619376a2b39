"""The in-process chain on disk: py-evm's key-value database in one SQLite file.

py-evm keeps everything of a chain (headers, bodies, the state trie, receipts, the
transaction index, the canonical head) in one key-value store, an ``AtomicDatabaseAPI``
(``eth.db.atomic.AtomicDB`` over a dict by default, i.e. in memory and gone with the
process). :class:`SqliteChainDB` is that store in ``<dir>/chain.sqlite3`` (standard
library ``sqlite3``, WAL, ``synchronous=FULL``), and :class:`PersistentPyEVMBackend` is
eth-tester's py-evm backend over it: opened on an empty directory it writes the genesis;
opened again it resumes from the stored canonical head, with every block, receipt,
balance, nonce and contract as they were.

**A block is wholly on disk or not at all.** Writes go into one open SQLite
transaction that is committed when the canonical head moves (py-evm's ``persist_block``
writes the head pointer in its last atomic batch, after the block's state nodes,
transactions and receipts): one transaction per block. A process killed at any moment
(SIGKILL included) reopens at the last committed block; the block being built is gone as
a whole (its transactions were never acknowledged: the exchange re-sends them from the
database). An exception inside an atomic batch discards the batch (py-evm's
``AtomicDBWriteBatch``), so nothing of it reaches the file.

One process at a time: the directory is locked (``flock`` on ``<dir>/LOCK``) for as long
as the store is open; the lock goes with the process, whatever the way it ends.

The backend also finds a transaction by hash through py-evm's transaction index (eth-tester
walks every block back from the head), so a receipt lookup costs the same at any height.

**Compaction** (:func:`compact`, with the store closed): a new file with the genesis, the
recent blocks and the head's whole state only, renamed over the old one; older blocks (their
receipts and logs) and past states are dropped, and the first block kept is recorded
(:func:`stored_history_start`). docs/settlement.md, "The in-process chain on disk".
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp
from eth.abc import AtomicWriteBatchAPI
from eth.constants import BLANK_ROOT_HASH, EMPTY_SHA3, EMPTY_UNCLE_HASH
from eth.db.atomic import AtomicDB, AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB
from eth.db.schema import SchemaV1
from eth.exceptions import TransactionNotFound as EVMTransactionNotFound
from eth.rlp.accounts import Account
from eth.vm.header import HeaderSedes
from eth_tester import PyEVMBackend
from eth_tester.backends.pyevm.main import (
    generate_genesis_state_for_keys,
    get_default_genesis_params,
    setup_tester_chain,
)
from eth_tester.backends.pyevm.serializers import serialize_transaction, serialize_transaction_receipt
from eth_tester.exceptions import TransactionNotFound
from eth_typing import Hash32
from eth_utils import keccak

DB_FILE = "chain.sqlite3"
LOCK_FILE = "LOCK"
HEAD_KEY = SchemaV1.make_canonical_head_hash_lookup_key()
#: eth-tester's fixed chain id: the in-process chain's before it took the signing domain's,
#: kept by a store created then (its deployment is recorded under it)
TESTER_CHAIN_ID = 131277322940537
#: where a store records its chain id (not a 32-byte hash: no py-evm key looks like it)
CHAIN_ID_KEY = b"voltbourse:chain-id"
#: where a compacted store records the first block it still has whole (header, transactions,
#: receipts) after the genesis; absent: every block since the genesis
HISTORY_START_KEY = b"voltbourse:history-start"
#: py-evm's records that are not keyed by a hash, kept as they are by a compaction
META_KEYS = (SchemaV1.make_header_chain_gaps_lookup_key(), SchemaV1.make_chain_gaps_lookup_key(),
             SchemaV1.make_checkpoint_headers_key(), CHAIN_ID_KEY)
#: the EVM's BLOCKHASH sees this many blocks back (py-evm's MAX_PREV_HEADER_DEPTH): a
#: compaction keeps at least as many
MIN_KEEP_BLOCKS = 256
#: blocks a compaction keeps by default (receipts of transactions in flight, the chain scan's
#: rescan window, rollback checks: all far more recent)
DEFAULT_KEEP_BLOCKS = 1024


class ChainStoreLocked(RuntimeError):
    """Another process has the chain directory open."""


class SqliteChainDB(BaseAtomicDB):
    """py-evm's ``AtomicDatabaseAPI`` in one SQLite file; one SQLite transaction per block
    (committed when the canonical head is written), see the module's docstring.

    Safe to use from several threads (one lock around the connection); eth-tester itself is
    called from one thread at a time by the exchange."""

    def __init__(self, directory: Path, *, synchronous: str = "FULL") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_FILE
        self._lock_fd = _lock_dir(self.directory)
        self._lock = threading.RLock()
        self._in_tx = False
        self._head_moved = False
        self._batch_depth = 0
        try:
            # isolation_level=None: transactions are ours (BEGIN/COMMIT), never implicit
            self._conn: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None,
                                                                    check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ state
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the chain store {self.path} is closed")
        return self._conn

    def has_chain(self) -> bool:
        """True when a chain was written here (a canonical head is committed)."""
        return HEAD_KEY in self

    def commit(self) -> None:
        """Commit what was written since the last commit (the block in progress included)."""
        with self._lock:
            if self._in_tx:
                self.conn.execute("COMMIT")
                self._in_tx = False
            self._head_moved = False

    def close(self) -> None:
        """Commit and close; the directory's lock is released. Idempotent."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self.commit()
                self._conn.close()
            finally:
                self._conn = None
                os.close(self._lock_fd)

    def abandon(self) -> None:
        """Close without committing (what is not committed is lost) and release the
        directory: the state a killed process leaves behind (tests)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.close()  # an open transaction is rolled back
            finally:
                self._conn = None
                self._in_tx = False
                os.close(self._lock_fd)

    def size_bytes(self) -> int:
        """The store's size on disk (database file and write-ahead log)."""
        return _store_bytes(self.directory)

    # ------------------------------------------------------------------ key-value
    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _after_write(self, key: bytes) -> None:
        if key == HEAD_KEY:
            self._head_moved = True
        if self._head_moved and self._batch_depth == 0:
            self.commit()

    def __getitem__(self, key: bytes) -> bytes:
        with self._lock:
            row = self.conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._begin()
            self.conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))
            self._after_write(key)

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            self._begin()
            if self.conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 0:
                raise KeyError(key)
            self._after_write(key)

    def _exists(self, key: bytes) -> bool:
        with self._lock:
            return self.conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        """py-evm's atomic batch: its writes are applied to the open transaction when the
        context exits without an exception (else dropped); a batch that moved the canonical
        head commits the transaction, the block with it."""
        with self._lock:
            self._batch_depth += 1
            try:
                with AtomicDBWriteBatch._commit_unless_raises(self) as batch:
                    yield batch
            finally:
                self._batch_depth -= 1
            if self._head_moved and self._batch_depth == 0:
                self.commit()


def _lock_dir(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise ChainStoreLocked(f"the in-process chain in {directory} is in use by another process"
                               f"{f' (pid {owner})' if owner else ''}: one exchange per chain directory "
                               "(set VOLTBOURSE_CHAIN_DATA_DIR to another directory, or to 'ephemeral' for a "
                               "throwaway chain)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def stored_history_start(db: Any) -> int:
    """The first block after the genesis that the store ``db`` (py-evm's key-value store)
    still has whole, i.e. with its transactions and receipts: 0 unless it was compacted."""
    raw = db.get(HISTORY_START_KEY)
    return int(raw) if raw is not None else 0


def droppable_blocks(directory: Path, keep_blocks: int = DEFAULT_KEEP_BLOCKS, *,
                     keep_from: int | None = None) -> int | None:
    """How many blocks a compaction keeping ``keep_blocks`` (and every block from
    ``keep_from`` on, as :func:`compact`) would drop from the store in ``directory`` now
    (None: no store there). Read without the directory's lock (a read-only look at the
    committed head)."""
    path = Path(directory) / DB_FILE
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        head_hash = _sqlite_get(conn, HEAD_KEY)
        head = rlp.decode(_sqlite_get(conn, head_hash), sedes=HeaderSedes).block_number
        try:
            start = int(_sqlite_get(conn, HISTORY_START_KEY))
        except KeyError:
            start = 0
    except (KeyError, sqlite3.DatabaseError):
        return None
    finally:
        conn.close()
    first_kept = head - keep_blocks + 1 if keep_from is None else min(head - keep_blocks + 1, keep_from)
    return max(0, first_kept - max(start, 1))


@dataclass(frozen=True)
class Compaction:
    """What :func:`compact` did."""

    head: int  # the canonical head's number (unchanged)
    history_start: int  # the first block kept whole after the genesis
    keys: int  # records in the new store
    bytes_before: int  # the store on disk before (database and write-ahead log)
    bytes_after: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"head": self.head, "history_start": self.history_start, "keys": self.keys,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "seconds": round(self.seconds, 3)}


def compact(directory: Path, keep_blocks: int = DEFAULT_KEEP_BLOCKS, *, keep_from: int | None = None,
            before_replace: Callable[[Path], None] | None = None) -> Compaction:
    """Rewrite the store in ``directory`` with only what the chain needs from now on, and
    replace the old file with it atomically. The store must be closed: the directory's lock
    is taken here (:class:`ChainStoreLocked` while a process has it open).

    Kept: the canonical head pointer, py-evm's chain-gap and checkpoint records, the store's
    chain id; the genesis block (its hash names the chain in the deployment record); the
    last ``keep_blocks`` canonical blocks, and every block from ``keep_from`` on (a caller
    that still needs older blocks says so), each with its header, score, number->hash
    lookup, transaction, receipt and withdrawal tries, uncles and the transaction-hash index
    of its transactions; the head block's whole state (the account trie, every account's
    storage trie, every contract's code). Dropped: older blocks and every older state (the
    trie nodes no longer reachable from the head's state root). The first block kept is
    recorded (:data:`HISTORY_START_KEY`). ``keep_blocks`` is at least
    :data:`MIN_KEEP_BLOCKS`, what the EVM's ``BLOCKHASH`` can see.

    Crash safety: the new store is written to a file beside the old one, fsynced and renamed
    over it (the directory fsynced); before that the old store's write-ahead log is
    checkpointed into its file, so the old file alone is the whole old store and a leftover
    log can never be applied to the new one. A crash at any moment leaves the old store or
    the new one, each complete. ``before_replace(new_file)`` is called just before the
    rename (tests inject a crash there)."""
    directory = Path(directory)
    path = directory / DB_FILE
    if keep_blocks < MIN_KEEP_BLOCKS:
        raise ValueError(f"keep_blocks must be at least {MIN_KEEP_BLOCKS} (what the EVM's BLOCKHASH sees), "
                         f"not {keep_blocks}")
    if not path.is_file():
        raise FileNotFoundError(f"no chain store in {directory} ({DB_FILE} is missing)")
    lock_fd = _lock_dir(directory)
    try:
        started = time.monotonic()
        before = _store_bytes(directory)
        tmp = directory / (DB_FILE + ".compact")
        _unlink_store_files(tmp)  # a compaction that crashed before its rename
        src = sqlite3.connect(path, isolation_level=None)
        try:
            src.execute("PRAGMA journal_mode=WAL")
            src.execute("BEGIN")  # one consistent view of the store
            records, head, first = _reachable(lambda k: _sqlite_get(src, k), keep_blocks, keep_from)
            src.execute("COMMIT")
            busy, _log, _done = src.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise ChainStoreLocked(f"the chain store {path} is in use (its write-ahead log cannot be "
                                       "checkpointed): not compacted")
        finally:
            src.close()
        try:
            _write_store(tmp, records)
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, path)
        except Exception:
            _unlink_store_files(tmp)  # the old store is untouched (a crash leaves the file: removed next time)
            raise
        _fsync(directory)
        # the old store's log was checkpointed and emptied above: what is left of it is stale
        for suffix in ("-wal", "-shm"):
            stale = directory / (DB_FILE + suffix)
            if stale.exists():
                stale.unlink()
        _fsync(directory)
        return Compaction(head, first, len(records), before, _store_bytes(directory), time.monotonic() - started)
    finally:
        os.close(lock_fd)


def _sqlite_get(conn: sqlite3.Connection, key: bytes) -> bytes:
    row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
    if row is None:
        raise KeyError(key)
    return bytes(row[0])


def _reachable(get: Callable[[bytes], bytes], keep_blocks: int,
               keep_from: int | None) -> tuple[dict[bytes, bytes], int, int]:
    """(the records to keep, the head's number, the first block kept after the genesis),
    read through ``get`` (KeyError for a missing key: the store is damaged, nothing is
    written)."""
    out: dict[bytes, bytes] = {}

    def copy(key: bytes) -> bytes:
        value = out[key] = get(key)
        return value

    head_hash = copy(HEAD_KEY)
    for key in META_KEYS:
        try:
            copy(key)
        except KeyError:
            pass
    head = rlp.decode(get(head_hash), sedes=HeaderSedes)
    number = head.block_number
    try:
        already = int(get(HISTORY_START_KEY))
    except KeyError:
        already = 0
    first = max(1, number - keep_blocks + 1)
    if keep_from is not None:
        first = min(first, max(1, keep_from))
    first = min(max(first, already), number + 1)  # blocks under an earlier compaction's start are gone
    for n in (0, *range(first, number + 1)):
        block_hash = rlp.decode(copy(SchemaV1.make_block_number_to_hash_lookup_key(n)), sedes=rlp.sedes.binary)
        header = rlp.decode(copy(block_hash), sedes=HeaderSedes)
        copy(SchemaV1.make_block_hash_to_score_lookup_key(block_hash))
        _copy_trie(get, out, header.transaction_root,
                   lambda tx: copy(SchemaV1.make_transaction_hash_to_block_lookup_key(Hash32(keccak(tx)))))
        _copy_trie(get, out, header.receipt_root)
        withdrawals_root = getattr(header, "withdrawals_root", BLANK_ROOT_HASH)
        _copy_trie(get, out, withdrawals_root,
                   lambda w: copy(SchemaV1.make_withdrawal_hash_to_block_lookup_key(Hash32(keccak(w)))))
        if header.uncles_hash != EMPTY_UNCLE_HASH:
            copy(header.uncles_hash)

    def account(encoded: bytes) -> None:
        acct = rlp.decode(encoded, sedes=Account)
        _copy_trie(get, out, acct.storage_root)
        if acct.code_hash != EMPTY_SHA3:
            copy(acct.code_hash)

    _copy_trie(get, out, head.state_root, account)
    out[HISTORY_START_KEY] = str(first).encode()
    return out, number, first


def _copy_trie(get: Callable[[bytes], bytes], out: dict[bytes, bytes], root: bytes,
               on_value: Callable[[bytes], Any] | None = None) -> None:
    """Copy every node of the hexary trie at ``root`` (nodes are stored under their keccak,
    a node under 32 bytes of RLP is inlined in its parent) into ``out``, calling
    ``on_value`` with each value it holds."""
    if root == BLANK_ROOT_HASH:
        return
    stack: list[Any] = [root]
    while stack:
        ref = stack.pop()
        if isinstance(ref, list):  # an inlined node
            node = ref
        else:
            if ref in out:  # the same subtree, already copied (and its values seen)
                continue
            out[ref] = get(ref)
            node = rlp.decode(out[ref])
        if len(node) == 17:  # branch: 16 children and a value
            stack.extend(child for child in node[:16] if child != b"")
            if node[16] != b"" and on_value is not None:
                on_value(node[16])
        elif len(node) == 2:  # leaf or extension: the high nibble of the path's first byte says which
            if node[0][0] >> 4 in (2, 3):
                if on_value is not None:
                    on_value(node[1])
            else:
                stack.append(node[1])


def _write_store(path: Path, records: dict[bytes, bytes]) -> None:
    """A new store file at ``path`` holding ``records``, in WAL mode like the store, fsynced."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")  # a scratch file until it is renamed
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", sorted(records.items()))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    _fsync(path)


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_store_files(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        if p.exists():
            p.unlink()


def _store_bytes(directory: Path) -> int:
    files = (directory / DB_FILE, directory / (DB_FILE + "-wal"), directory / (DB_FILE + "-shm"))
    return sum(p.stat().st_size for p in files if p.is_file())


def _with_chain_id(base: Any, chain_id: int) -> Any:
    """eth-tester's chain class (its VMs, its header rules) with our chain id."""
    return type(base.__name__, (base,), {"chain_id": chain_id})


class _TesterBackend(PyEVMBackend):
    """eth-tester's py-evm backend (its chain class, accounts, genesis and forks) with the chain
    id of the signing domain (the tester's own is a fixed 131277322940537); subclasses say
    where the chain's database is (:meth:`_open`)."""

    def __init__(self, chain_id: int) -> None:
        self.wanted_chain_id = chain_id
        super().__init__()

    def reset_to_genesis(self, genesis_params: Any = None, genesis_state: Any = None, num_accounts: Any = None,
                         vm_configuration: Any = None, mnemonic: Any = None, hd_path: Any = None) -> None:
        # eth-tester's own set-up, for its chain class and keys (a throwaway genesis in memory)
        keys, scratch = setup_tester_chain(genesis_params, genesis_state, num_accounts, vm_configuration,
                                           mnemonic, hd_path)
        self.account_keys = keys

        def genesis(db: Any, chain_id: int) -> Any:
            return _with_chain_id(type(scratch), chain_id).from_genesis(
                db, genesis_params or get_default_genesis_params(),
                genesis_state or generate_genesis_state_for_keys(keys))

        self.chain = self._open(type(scratch), genesis)

    def _open(self, base: Any, genesis: Any) -> Any:
        raise NotImplementedError


class EphemeralPyEVMBackend(_TesterBackend):
    """In memory: a new chain at every start."""

    def _open(self, base: Any, genesis: Any) -> Any:
        return genesis(AtomicDB(), self.wanted_chain_id)


class PersistentPyEVMBackend(_TesterBackend):
    """Over a :class:`SqliteChainDB`: a new store gets the genesis and ``chain_id`` (recorded
    in the store), an existing one is resumed with the chain id it was created with."""

    def __init__(self, db: SqliteChainDB, chain_id: int = TESTER_CHAIN_ID) -> None:
        self.db = db
        super().__init__(chain_id)

    def _open(self, base: Any, genesis: Any) -> Any:
        if self.db.has_chain():  # resumes at the committed canonical head, with its chain id
            recorded = self.db.get(CHAIN_ID_KEY)
            return _with_chain_id(base, int(recorded) if recorded is not None else TESTER_CHAIN_ID)(self.db)
        chain = genesis(self.db, self.wanted_chain_id)
        self.db[CHAIN_ID_KEY] = str(self.wanted_chain_id).encode()
        self.db.commit()
        return chain

    def _locate(self, transaction_hash: bytes) -> tuple[Any, Any, int]:
        """(block, transaction, index) through the transaction index, pending block first."""
        pending = self.chain.get_block()
        for index, tx in enumerate(pending.transactions):
            if tx.hash == transaction_hash:
                return pending, tx, index
        try:
            number, index = self.chain.chaindb.get_transaction_index(transaction_hash)
        except EVMTransactionNotFound as exc:
            raise TransactionNotFound(f"No transaction found for transaction hash: 0x{transaction_hash.hex()}") \
                from exc
        block = self.chain.get_canonical_block_by_number(number)
        return block, block.transactions[index], index

    def get_transaction_by_hash(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        return serialize_transaction(block, tx, index, block.number == self.chain.get_block().number)

    def get_transaction_receipt(self, transaction_hash: bytes) -> Any:
        block, tx, index = self._locate(transaction_hash)
        return serialize_transaction_receipt(block, block.get_receipts(self.chain.chaindb), tx, index,
                                             block.number == self.chain.get_block().number, self.chain.get_vm())
