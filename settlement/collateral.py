"""A member's own collateral (the peer message ``my_collateral``) and the deposits it lists.

- :func:`record_deposits` keeps the registry's ``Deposited`` events of a scanned block range
  in ``settlement_deposits`` (called by the worker's chain scan, migration 0010). Rows at or
  above the range's first block are replaced by what the chain has now, so a rescan after a
  rollback or a reorg never leaves a deposit the chain no longer has (rows above the range
  come back when their blocks are scanned again).
- :func:`my_collateral` answers for one member: its collateral read from the registry on the
  worker's chain thread, the engine's view of it (what is free to trade), its recent deposits
  and its withdrawal requests. Money is given as decimal strings of 1e-8 EUR units.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from web3 import Web3

from exchange.core.ids import MemberId
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
                      "seen_at": r["seen_at"].isoformat()} for r in deposits],
        "withdrawals": [{"request_id": r["request_id"], "amount": _units(r["amount"]), "state": r["state"],
                         "reason": r["reason"], "updated_at": r["updated_at"].isoformat()} for r in withdrawals],
    }
