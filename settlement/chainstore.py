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
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDB, AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB
from eth.db.schema import SchemaV1
from eth.exceptions import TransactionNotFound as EVMTransactionNotFound
from eth_tester import PyEVMBackend
from eth_tester.backends.pyevm.main import (
    generate_genesis_state_for_keys,
    get_default_genesis_params,
    setup_tester_chain,
)
from eth_tester.backends.pyevm.serializers import serialize_transaction, serialize_transaction_receipt
from eth_tester.exceptions import TransactionNotFound

DB_FILE = "chain.sqlite3"
LOCK_FILE = "LOCK"
HEAD_KEY = SchemaV1.make_canonical_head_hash_lookup_key()
#: eth-tester's fixed chain id: the in-process chain's before it took the signing domain's,
#: kept by a store created then (its deployment is recorded under it)
TESTER_CHAIN_ID = 131277322940537
#: where a store records its chain id (not a 32-byte hash: no py-evm key looks like it)
CHAIN_ID_KEY = b"voltbourse:chain-id"


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
        return sum(p.stat().st_size for p in self.directory.glob(DB_FILE + "*") if p.is_file())

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
