"""The operator's member registry: one ``members`` row per member of a market.

The row holds what the engine does not know (name, role, tariffs) and the risk
limits it does know (collateral, export capacity, suspended). Every write goes
in this order: upsert the row, then submit ``RegisterMember`` to the engine
(journaled like any command). A crash between the two leaves the row ahead of
the engine; :meth:`MemberRegistry.reconcile` (run at service start) re-submits
``RegisterMember`` for every row whose engine account is missing or differs.

Member ids are EIP-55 checksum Ethereum addresses (the settlement identity).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from eth_utils import to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from exchange.core.ids import MemberId
from exchange.core.model import RegisterMember, Rejected
from exchange.protocol.errors import VoltbourseError
from exchange.runtime.market import MarketRuntime, Result

__all__ = [
    "CommandRejected",
    "Member",
    "MemberExists",
    "MemberIn",
    "MemberPatch",
    "MemberRegistry",
    "RegistryError",
    "UnknownMember",
    "checksum_address",
]

Role = Literal["consumer", "prosumer", "battery", "aggregator"]

#: Sane bounds (all well inside PostgreSQL bigint).
MAX_CAPACITY_W = 10**9  # 1 GW
MAX_TARIFF_TICKS = 10**8  # +-1 000 000.00 EUR/MWh
MAX_COLLATERAL = 10**18  # 10 000 000 000 EUR in units of 1e-8 EUR

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def checksum_address(value: str) -> str:
    """``0x`` + 40 hex digits -> EIP-55 checksum form. All-lower or all-upper hex is
    accepted as is; mixed case must already be the correct checksum (a typo guard)."""
    if not isinstance(value, str) or not _HEX_ADDRESS.fullmatch(value):
        raise ValueError("address must be 0x followed by 40 hex digits")
    out = to_checksum_address(value)
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and value != out:
        raise ValueError("address has a wrong EIP-55 checksum (mixed case)")
    return out


Address = Annotated[StrictStr, AfterValidator(checksum_address),
                    Field(description="Ethereum address (normalised to its EIP-55 checksum form)",
                          examples=["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"],
                          json_schema_extra={"pattern": _HEX_ADDRESS.pattern})]
Name = Annotated[StrictStr, Field(max_length=100)]
CapacityW = Annotated[StrictInt, Field(ge=0, le=MAX_CAPACITY_W, description="export capacity, W")]
TariffTicks = Annotated[StrictInt, Field(ge=-MAX_TARIFF_TICKS, le=MAX_TARIFF_TICKS,
                                         description="ticks of 0.01 EUR/MWh")]
Collateral = Annotated[StrictInt, Field(ge=0, le=MAX_COLLATERAL, description="money units of 1e-8 EUR")]


class MemberIn(BaseModel):
    """A new member (``POST /api/operator/members``). Created active (not suspended)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: Address
    name: Name = ""
    role: Role
    export_capacity_w: CapacityW = 0
    retail_tariff_ticks: TariffTicks = Field(description="price of grid import, ticks of 0.01 EUR/MWh")
    feed_in_tariff_ticks: TariffTicks = Field(description="price of grid export, ticks of 0.01 EUR/MWh")
    collateral: Collateral = 0


def _no_null_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
    schema["minProperties"] = 1


class MemberPatch(BaseModel):
    """A change to a member (``PATCH``): only the fields given change; ``null`` is not
    accepted; at least one field. Suspending cancels the member's resting orders."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_no_null_defaults)

    # absent = unchanged (None defaults are not validated, hence the ignores)
    name: Name = None  # type: ignore[assignment]
    role: Role = None  # type: ignore[assignment]
    export_capacity_w: CapacityW = None  # type: ignore[assignment]
    retail_tariff_ticks: TariffTicks = None  # type: ignore[assignment]
    feed_in_tariff_ticks: TariffTicks = None  # type: ignore[assignment]
    collateral: Collateral = None  # type: ignore[assignment]
    suspended: StrictBool = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _not_empty(self) -> MemberPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class Member(BaseModel):
    """A member as stored (the ``members`` row)."""

    address: str
    name: str
    role: Role
    export_capacity_w: int
    retail_tariff_ticks: int
    feed_in_tariff_ticks: int
    collateral: int
    suspended: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Member:
        return cls(**{k: row[k] for k in cls.model_fields})


class RegistryError(VoltbourseError):
    """A refused registry request: a catalogued code and an HTTP status."""

    default_status: int | None = 400
    default_code = "INVALID_VALUE"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(code or self.default_code, message, status=self.default_status)


class MemberExists(RegistryError):
    default_status, default_code = 409, "MEMBER_EXISTS"


class UnknownMember(RegistryError):
    default_status, default_code = 404, "UNKNOWN_MEMBER"


class CommandRejected(RegistryError):
    """The engine rejected the command (``code`` is its reason): answered with the catalogue's
    status for that reason (404 for a product or member that is not there, else 409)."""

    default_status = None  # the catalogue's, as for any catalogued code


_COLUMNS = "address, name, role, export_capacity_w, retail_tariff_ticks, feed_in_tariff_ticks, collateral, " \
           "suspended, created_at, updated_at"
_PATCHABLE = frozenset(MemberPatch.model_fields)


class MemberRegistry:
    """The members of one market: rows in ``members``, accounts in the engine."""

    def __init__(self, pool: asyncpg.Pool, market_id: str, runtime: MarketRuntime, *,
                 chain_collateral: bool = False) -> None:
        self.pool = pool
        self.market_id = market_id
        self.runtime = runtime
        # With on-chain settlement the chain owns collateral (deposits, settled batches,
        # withdrawals): the registry then never sends it to the engine. A new member's
        # ``collateral`` is then credited on chain by ``funder`` (settlement sets it: the
        # operator's on-ramp), and a PATCH of collateral changes only the row.
        self.chain_collateral = chain_collateral
        self.funder: Callable[[str, int], Awaitable[None]] | None = None  # (address, amount)
        # One writer at a time: the row and the engine command of two concurrent updates of
        # a member must not interleave (row A, row B, command B, command A).
        self._lock = asyncio.Lock()

    async def create(self, m: MemberIn) -> Member:
        """Insert the member (``MemberExists`` if the address is taken) and register it
        with the engine."""
        async with self._lock:
            row = await self.pool.fetchrow(
                f"INSERT INTO members (market_id, address, name, role, export_capacity_w, retail_tariff_ticks, "
                f"feed_in_tariff_ticks, collateral) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                f"ON CONFLICT (market_id, address) DO NOTHING RETURNING {_COLUMNS}",
                self.market_id, m.address, m.name, m.role, m.export_capacity_w, m.retail_tariff_ticks,
                m.feed_in_tariff_ticks, m.collateral)
            if row is None:
                raise MemberExists(f"member {m.address} exists already")
            member = Member.from_row(row)
            await self._register(member)
        if self.chain_collateral and self.funder is not None and member.collateral > 0:
            await self.funder(member.address, member.collateral)
        return member

    async def list(self) -> list[Member]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM members WHERE market_id = $1 ORDER BY created_at, "
                                     f"address", self.market_id)
        return [Member.from_row(r) for r in rows]

    async def get(self, address: str) -> Member | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM members WHERE market_id = $1 AND address = $2",
                                       self.market_id, address)
        return Member.from_row(row) if row else None

    async def update(self, address: str, patch: MemberPatch) -> Member:
        """Apply ``patch`` to the row, then re-register the member with the engine
        (suspending cancels its resting orders)."""
        changes = patch.changes()
        if not changes:
            raise RegistryError("the patch changes nothing: give at least one field", "INVALID_REQUEST")
        cols = [c for c in changes if c in _PATCHABLE]  # field names only (never user text) in SQL
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=3))
        async with self._lock:
            row = await self.pool.fetchrow(
                f"UPDATE members SET {sets}, updated_at = now() WHERE market_id = $1 AND address = $2 "
                f"RETURNING {_COLUMNS}", self.market_id, address, *(changes[c] for c in cols))
            if row is None:
                raise UnknownMember(f"no member {address}")
            member = Member.from_row(row)
            await self._register(member)
            return member

    async def reconcile(self) -> int:
        """Re-register every member whose engine account is missing or differs from its row
        (collateral, capacity, suspended); returns how many. Run at service start, before
        peers connect."""
        async with self._lock:
            accounts = self.runtime.engine.accounts
            stale = []
            for m in await self.list():
                a = accounts.get(MemberId(m.address))
                collateral = self._engine_collateral(m)
                if a is None or (a.export_capacity_w, a.suspended) != (m.export_capacity_w, m.suspended) or (
                        collateral is not None and a.collateral != collateral):
                    stale.append(m)
            await asyncio.gather(*(self._register(m) for m in stale))
            return len(stale)

    def _engine_collateral(self, m: Member) -> int | None:
        """What the registry tells the engine: the row's collateral, or nothing (None keeps
        the engine's) when the chain owns collateral."""
        return None if self.chain_collateral else m.collateral

    async def _register(self, m: Member) -> Result:
        res = await self.runtime.submit(RegisterMember(0, member=MemberId(m.address), collateral=self._engine_collateral(m),
                                                       export_capacity_w=m.export_capacity_w,
                                                       suspended=m.suspended))
        for ev in res.events:
            if type(ev) is Rejected:
                raise CommandRejected(ev.detail, ev.reason)
        return res
