"""A member's own collateral (the peer message ``my_collateral``) and the deposits it lists.

- :func:`record_deposits` keeps the registry's ``Deposited`` events of a scanned block range
  in ``settlement_deposits`` (called by the worker's chain scan, migration 0010). Rows at or
  above the range's first block are replaced by what the chain has now, so a rescan after a
  rollback or a reorg never leaves a deposit the chain no longer has (rows above the range
  come back when their blocks are scanned again).
- :func:`my_collateral` answers for one member: its collateral read from the registry on the
  worker's chain thread, the engine's view of it (what is free to trade), its recent deposits
  and its withdrawal requests. Money is given as decimal strings of 1e-8 EUR units.
- :class:`ChainCollateral` is what the worker knows of members' collateral on chain as of the
  chain's head: learnt from its own ``anchorBatch`` receipts (``NetSettled`` carries each
  member's collateral after it) and from reads, forgotten as soon as the head is another block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from web3 import Web3
from web3.logs import DISCARD

from exchange.core.ids import MemberId
from exchange.core.units import iso_dt
from exchange.protocol.errors import VoltbourseError

#: how long a member's request waits for the chain thread (busy with an anchor, or a slow node)
CHAIN_READ_TIMEOUT_S = 10.0


async def record_deposits(pool: asyncpg.Pool, market_id: str, deployment_id: int | None, start: int,
                          deposits: Sequence[Any]) -> None:
    """The ``Deposited`` events found in blocks ``start`` … (the range just scanned) replace
    what was recorded at or above ``start`` for the deployment, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM settlement_deposits WHERE market_id = $1 AND deployment_id = $2 "
                           "AND block_number >= $3", market_id, deployment_id, start)
        if deposits:
            await conn.executemany(
                "INSERT INTO settlement_deposits (market_id, deployment_id, tx_hash, log_index, block_number, member, "
                "amount, collateral_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                [(market_id, deployment_id, "0x" + bytes(ev["transactionHash"]).hex(), ev["logIndex"],
                  ev["blockNumber"], ev["args"]["member"], ev["args"]["amount"], ev["args"]["collateral"])
                 for ev in deposits])


def _units(v: Any) -> str:
    return str(int(v))


async def my_collateral(*, pool: asyncpg.Pool, market_id: str, deployment_id: int | None, chain: Any,
                        run_on_chain: Callable[..., Awaitable[Any]], engine: Any, member: str,
                        limit: int) -> dict[str, Any]:
    """``member``'s collateral: on chain, in the engine, its recent deposits and withdrawal
    requests (``limit`` of each, the most recent first)."""
    acct = engine.accounts.get(MemberId(member))
    if acct is None:
        raise VoltbourseError("UNKNOWN_MEMBER", f"{member} is not a registered member of {market_id}")
    address = Web3.to_checksum_address(member)
    registry = chain.registry

    def read() -> tuple[int, int]:  # on the chain thread: the head, and the collateral as of that block
        head = chain.w3.eth.block_number
        return head, registry.functions.collateral(address).call(block_identifier=head)

    try:
        head, on_chain = await asyncio.wait_for(run_on_chain(read), CHAIN_READ_TIMEOUT_S)
    except TimeoutError as exc:
        raise VoltbourseError("CHAIN_UNAVAILABLE", f"the chain did not answer within {CHAIN_READ_TIMEOUT_S:g} s; "
                              "retry shortly") from exc
    except Exception as exc:  # noqa: BLE001 - a node down or refusing: said precisely, never a 500
        raise VoltbourseError("CHAIN_UNAVAILABLE", f"the chain could not be read: {exc}"[:300]) from exc
    deposits = await pool.fetch(
        "SELECT block_number, tx_hash, log_index, amount, collateral_after, seen_at FROM settlement_deposits "
        "WHERE market_id = $1 AND deployment_id = $2 AND member = $3 "
        "ORDER BY block_number DESC, log_index DESC LIMIT $4", market_id, deployment_id, address, limit)
    withdrawals = await pool.fetch(
        "SELECT request_id, amount, state, reason, updated_at FROM settlement_withdrawals "
        "WHERE market_id = $1 AND deployment_id = $2 AND lower(member) = lower($3) "
        "ORDER BY request_id DESC LIMIT $4", market_id, deployment_id, address, limit)
    reserved = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0)::numeric FROM settlement_withdrawals WHERE market_id = $1 "
        "AND deployment_id = $2 AND lower(member) = lower($3) AND state IN ('requested', 'reserved')",
        market_id, deployment_id, address)
    in_use = acct.open_exposure + max(acct.net_payable, 0)
    return {
        "member": address,
        "chain": {"collateral": _units(on_chain), "block": head, "chain_id": chain.chain_id,
                  "registry": registry.address, "token": chain.token.address},
        "engine": {"collateral": _units(acct.collateral), "open_exposure": _units(acct.open_exposure),
                   "net_payable": _units(acct.net_payable), "free": _units(max(acct.collateral - in_use, 0))},
        "withdrawals_pending": _units(reserved),
        "deposits": [{"block": r["block_number"], "tx_hash": r["tx_hash"], "log_index": r["log_index"],
                      "amount": _units(r["amount"]), "collateral_after": _units(r["collateral_after"]),
                      "seen_at": iso_dt(r["seen_at"])} for r in deposits],
        "withdrawals": [{"request_id": r["request_id"], "amount": _units(r["amount"]), "state": r["state"],
                         "reason": r["reason"], "updated_at": iso_dt(r["updated_at"])} for r in withdrawals],
    }


class ChainCollateral:
    """Members' collateral on chain as of one block (``block_hash``), for the worker's
    collateral updates: the registry's ``collateral(member)`` at the head, without an
    ``eth_call`` per member (on the in-process EVM one costs ≈ 7 ms of the settlement
    process's CPU, a batch of 40 members ≈ 0.3 s, three times its ``anchorBatch``).

    What it holds is exact for that block, and used only while the chain's head is that
    block (compared by hash, so a rollback or a reorg to the same height is another block):

    - an ``anchorBatch`` of ours that is the last transaction of its block: its ``NetSettled``
      events carry each member's collateral after it, i.e. at that block. Members not in the
      batch keep what was known when the block is the only transaction on top of the known
      block (the batch changed nobody else's collateral); otherwise only the batch's members
      are known;
    - a read (``eth_call`` at the head's number) of a member not known at the head.

    Any other transaction (a deposit, a withdrawal, a payout, a credit, someone else's) moves
    the head, and everything is read again. Called on the worker's chain thread only."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.block_hash: bytes | None = None
        self.values: dict[str, int] = {}  # checksummed member -> collateral at block_hash
        self.reads = 0  # eth_calls made (a counter for tests and benches)

    def forget(self) -> None:
        self.block_hash, self.values = None, {}

    def learn_receipt(self, receipt: Any) -> None:
        """A receipt of our ``anchorBatch`` (status 1, its ``BatchAnchored`` checked)."""
        events = self.chain.registry.events.NetSettled().process_receipt(receipt, errors=DISCARD)
        block = self.chain.w3.eth.get_block(receipt["blockHash"])
        txs = block["transactions"]
        if receipt["transactionIndex"] != len(txs) - 1:  # something after it in its block
            self.forget()
            return
        if not (len(txs) == 1 and self.block_hash is not None and bytes(block["parentHash"]) == self.block_hash):
            self.values = {}
        self.block_hash = bytes(block["hash"])
        for ev in events:  # in log order: the last one of a member is its collateral after the batch
            self.values[Web3.to_checksum_address(ev["args"]["member"])] = int(ev["args"]["collateral"])

    def at_head(self, members: Sequence[str]) -> dict[str, int]:
        """Each member's collateral at the chain's head (keys as given)."""
        head = self.chain.w3.eth.get_block("latest")
        if bytes(head["hash"]) != self.block_hash:
            self.block_hash, self.values = bytes(head["hash"]), {}
        out: dict[str, int] = {}
        for member in members:
            address = Web3.to_checksum_address(member)
            if address not in self.values:
                self.reads += 1
                self.values[address] = int(self.chain.registry.functions.collateral(address).call(
                    block_identifier=head["number"]))
            out[member] = self.values[address]
        return out
