"""Metering's peer messages (WebSocket, after login) and its signed REST push: a member's
gateway sends its meter readings; a member reads its points, energy and bills.
Registered by ``exchange.metering.plugin``; see docs/metering.md."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from exchange.protocol.messages import Request
from exchange.protocol.types import UtcTime

PointId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]
Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
#: readings per WebSocket message: what fits in a frame of the default ws_max_message_bytes
#: (16 KiB; a reading is about 95 bytes of JSON)
MAX_PUSH = 150
#: readings per signed REST push (body up to 1 MiB)
MAX_REST_PUSH = 2_000


class Reading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    point_id: PointId
    interval_start: UtcTime
    energy_wh: Annotated[int, Field(ge=0, le=10**9, description="Wh in the interval")]


class MeterReadings(Request):
    """Push readings of your own metering points (at most 150 per message: the frame size
    limit). Validated
    like an upload (docs/metering.md): the interval grid, no interval that has not ended,
    no second reading of an interval in one message; a reading that differs from a stored
    one is a correction (kept in the audit trail)."""

    type: Literal["meter_readings"]
    readings: Annotated[list[Reading], Field(min_length=1, max_length=MAX_PUSH)]


class MeterPoints(Request):
    """Your metering points."""

    type: Literal["meter_points"]


class MeterDeviceRegister(Request):
    """Let a device key (your home gateway's) push your readings over REST."""

    type: Literal["meter_device_register"]
    device: Address
    label: Annotated[str, StringConstraints(max_length=64)] = ""


class MeterDeviceRevoke(Request):
    type: Literal["meter_device_revoke"]
    device: Address


class MyEnergy(Request):
    """Your metered energy and KPIs for a period (at most 31 days), per day or per interval."""

    type: Literal["my_energy"]
    start: UtcTime
    end: UtcTime
    by: Literal["day", "interval"] = "day"


class MyBills(Request):
    """Your issued bills (latest version of each period)."""

    type: Literal["my_bills"]


class MyBill(Request):
    """One of your issued bills, every line."""

    type: Literal["my_bill"]
    start: UtcTime
    end: UtcTime


REQUESTS = (MeterReadings, MeterPoints, MeterDeviceRegister, MeterDeviceRevoke, MyEnergy, MyBills, MyBill)


class SignedReadings(BaseModel):
    """``POST /api/metering/readings``: readings pushed by a member's gateway, signed
    (EIP-191 ``personal_sign``) by the member's key or a device key it registered, over
    :func:`push_message`. ``nonce`` must grow with every push of the same signer (e.g. Unix
    milliseconds)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    member: Address
    signer: Address
    nonce: Annotated[int, Field(ge=1, le=2**63 - 1)]
    readings: Annotated[list[Reading], Field(min_length=1, max_length=MAX_REST_PUSH)]
    signature: Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]


def readings_digest(readings: list[Reading]) -> str:
    """SHA-256 (hex) of the readings as canonical JSON: a list of
    ``[point_id, interval_start (ISO 8601, Z), energy_wh]``."""
    rows = [[r.point_id, r.interval_start.isoformat().replace("+00:00", "Z"), r.energy_wh] for r in readings]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def push_message(market_id: str, member: str, nonce: int, digest: str) -> str:
    """The text a gateway signs (EIP-191) to push readings."""
    return (f"Voltbourse meter readings\nMarket: {market_id}\nMember: {member.lower()}\nNonce: {nonce}\n"
            f"Readings: {digest}")
