"""What a node said when a call or transaction failed, in words the worker can act on.

- :class:`RevertDecoder` turns revert data into the custom error of our contracts (by its
  4-byte selector, from the compiled ABI in ``settlement/artifacts``), or ``Error(string)``
  / ``Panic(uint256)``; :func:`revert_data` digs that data out of whatever exception web3
  raised (``ContractLogicError.data`` from a JSON-RPC node, or eth-tester's message).
- :func:`classify_send_error` sorts a refused ``eth_sendRawTransaction``: the node already
  has the transaction (``already known`` / ``already imported`` / ``known transaction`` /
  code -32003: it is pending, not failed), its nonce is used (``nonce too low``) or ahead
  of the account (``nonce too high``), or anything else.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

#: Error(string) and Panic(uint256), which solc emits for require messages and checks
ERROR_STRING = bytes.fromhex("08c379a0")
PANIC = bytes.fromhex("4e487b71")

PANIC_CODES = {0x01: "assert failed", 0x11: "arithmetic overflow or underflow", 0x12: "division by zero",
               0x21: "bad enum value", 0x22: "bad storage byte array", 0x31: "pop on an empty array",
               0x32: "array index out of bounds", 0x41: "out of memory", 0x51: "call to a zero function"}


@dataclass(frozen=True)
class Revert:
    """A decoded revert. ``name`` is None when the data matches no known error (or there
    was none: ``text`` then says what the node said)."""

    name: str | None
    args: dict[str, Any] = field(default_factory=dict)
    selector: str = ""
    text: str = ""

    @property
    def decoded(self) -> bool:
        return self.name is not None

    def __str__(self) -> str:
        if self.name is None:
            return f"revert without a known error ({self.text or 'no data'})"
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args.items())})"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "selector": self.selector, "text": str(self)}


def _abi_type(inp: dict) -> str:
    t = inp["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in inp.get("components", [])) + ")" + t[len("tuple"):]
    return str(t)


def _jsonable(value: Any, abi_type: str = "") -> Any:
    if abi_type == "address" and isinstance(value, str):
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return str(value)  # jsonb through orjson: 64-bit integers at most
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RevertDecoder:
    """Custom errors of the given ABIs, by selector."""

    def __init__(self, abis: Iterable[list]) -> None:
        self._errors: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in entry.get("inputs", [])]
                names = [i.get("name") or f"arg{n}" for n, i in enumerate(entry.get("inputs", []))]
                selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
                self._errors[selector] = (entry["name"], types, names)

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self._errors.values()}

    def decode(self, data: bytes | None, text: str = "") -> Revert:
        if not data or len(data) < 4:
            return Revert(None, text=text or "no revert data")
        sel, body = data[:4], data[4:]
        try:
            if sel == ERROR_STRING:
                return Revert("Error", {"reason": abi_decode(["string"], body)[0]}, "0x" + sel.hex())
            if sel == PANIC:
                code = abi_decode(["uint256"], body)[0]
                return Revert("Panic", {"code": code, "meaning": PANIC_CODES.get(code, "unknown")}, "0x" + sel.hex())
            known = self._errors.get(sel)
            if known is None:
                return Revert(None, selector="0x" + sel.hex(), text=f"unknown selector 0x{sel.hex()}")
            name, types, names = known
            values = abi_decode(types, body) if types else ()
            return Revert(name, {n: _jsonable(v, t) for n, v, t in zip(names, values, types)}, "0x" + sel.hex())
        except Exception as exc:  # noqa: BLE001 - malformed data: say so rather than fail
            return Revert(None, selector="0x" + sel.hex(), text=f"undecodable revert data: {exc}")


# ---------------------------------------------------------------------- exceptions -> data
_BYTES_LITERAL = re.compile(r"""(b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")""")
_HEX = re.compile(r"0x[0-9a-fA-F]{8,}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _rpc_error(exc: BaseException) -> dict | None:
    """The JSON-RPC ``error`` object of a web3 exception, if it carries one."""
    resp = getattr(exc, "rpc_response", None)
    if isinstance(resp, dict) and isinstance(resp.get("error"), dict):
        return resp["error"]
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, dict) and ("code" in arg or "message" in arg):
            return arg
        if isinstance(arg, dict) and isinstance(arg.get("error"), dict):
            return arg["error"]
    return None


def revert_data(exc: BaseException) -> tuple[bool, bytes | None, str]:
    """(reverted, data, text) from an exception raised by a call or a send: ``reverted``
    is True when the EVM ran the code and it failed (a revert or an invalid opcode), as
    opposed to the node being unreachable or refusing the request."""
    for e in _chain(exc):
        data = getattr(e, "data", None)
        if type(e).__name__ in ("ContractLogicError", "ContractCustomError", "ContractPanicError",
                                "TransactionFailed"):
            msg = str(e.args[0]) if e.args else str(e)
            if isinstance(data, str) and data.startswith("0x"):
                return True, bytes.fromhex(data[2:]), msg
            if isinstance(data, bytes):
                return True, data, msg
            raw = e.args[0] if e.args else None
            if isinstance(raw, bytes):
                return True, raw, msg
            m = _BYTES_LITERAL.search(msg)
            if m:
                try:
                    value = ast.literal_eval(m.group(1))
                except (ValueError, SyntaxError):
                    value = None
                if isinstance(value, bytes):
                    return True, value, msg
            m2 = _HEX.search(msg)
            if m2 and "revert" in msg.lower():
                return True, bytes.fromhex(m2.group(0)[2:]), msg
            return True, None, msg
        err = _rpc_error(e)
        if err is not None:
            msg = str(err.get("message", ""))
            if err.get("code") == 3 or "revert" in msg.lower() or "invalid opcode" in msg.lower():
                d = err.get("data")
                if isinstance(d, dict):  # some nodes nest it
                    d = d.get("data")
                return True, bytes.fromhex(d[2:]) if isinstance(d, str) and d.startswith("0x") else None, msg
    return False, None, str(exc)


# ---------------------------------------------------------------------- send errors
ALREADY_KNOWN = "already_known"
NONCE_TOO_LOW = "nonce_too_low"
NONCE_TOO_HIGH = "nonce_too_high"
OTHER = "other"

_KNOWN = ("already known", "already imported", "known transaction", "alreadyknown", "already in the pool",
          "already exists")
_ETH_TESTER_NONCE = re.compile(r"nonce: expected (\d+), but got (\d+)", re.IGNORECASE)


def classify_send_error(exc: BaseException) -> str:
    """What a refused ``eth_sendRawTransaction`` means for the transaction. The message
    decides first (anvil answers -32003 to a nonce too low as well); a -32003 that names
    no other reason means the node has the transaction."""
    texts, rejected = [], False
    for e in _chain(exc):
        err = _rpc_error(e)
        if err is not None:
            rejected |= err.get("code") == -32003
            texts.append(str(err.get("message", "")))
        texts.append(str(e))
    text = " ".join(texts).lower()
    m = _ETH_TESTER_NONCE.search(text)
    if m:
        expected, got = int(m.group(1)), int(m.group(2))
        return NONCE_TOO_LOW if got < expected else NONCE_TOO_HIGH
    if "nonce too low" in text or "oldnonce" in text or "nonce has already been used" in text:
        return NONCE_TOO_LOW
    if "nonce too high" in text or "noncegap" in text or "nonce gap" in text:
        return NONCE_TOO_HIGH
    if any(k in text for k in _KNOWN):
        return ALREADY_KNOWN
    if rejected and not any(k in text for k in ("underpriced", "insufficient", "fee", "gas", "exceeds", "size")):
        return ALREADY_KNOWN
    return OTHER
