"""An EIP-1193 browser wallet backed by a test key, for the portal's browser tests.

``TestWallet(key).install(context)`` defines ``window.ethereum`` in every page of a Playwright
browser context: ``request({method, params})`` goes to a Python function (``expose_function``)
that signs for real with eth-account: ``personal_sign`` of the hex message (EIP-191,
``encode_defunct``) and ``eth_signTypedData_v4`` of the typed data's JSON (EIP-712,
``encode_typed_data(full_message=...)``). Like a real wallet it answers ``eth_requestAccounts``
with the lower-case address, and refuses with EIP-1193 errors (4001 user rejected, 4100 an
address it does not hold, 4200 an unsupported method). What it signed is kept in ``signed``;
``refuse`` makes the next requests fail as a user who declines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

INIT_SCRIPT = """
(() => {
  const listeners = {};
  window.ethereum = {
    isVoltbourseTestWallet: true,
    async request({ method, params }) {
      const answer = JSON.parse(await window.__vbTestWallet(method, JSON.stringify(params ?? null)));
      if (answer.error) {
        const e = new Error(answer.error.message);
        e.code = answer.error.code;
        throw e;
      }
      return answer.result;
    },
    on(event, fn) { (listeners[event] ||= []).push(fn); },
    removeListener(event, fn) { listeners[event] = (listeners[event] || []).filter((f) => f !== fn); },
  };
})();
"""


@dataclass
class Signed:
    method: str
    payload: Any  # the message text (personal_sign) or the typed data (eth_signTypedData_v4)
    signature: str


@dataclass
class TestWallet:
    __test__ = False  # not a test class

    key: Any  # a LocalAccount (or a private key)
    chain_id: int = 1337
    refuse: bool = False  # decline every signature/connection, as a user pressing "Reject"
    signed: list[Signed] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acct = self.key if hasattr(self, "key") and hasattr(self.key, "address") else Account.from_key(self.key)

    @property
    def address(self) -> str:
        return self.acct.address

    async def install(self, context) -> None:
        """Expose the signer and inject ``window.ethereum`` into every page of ``context``."""
        await context.expose_function("__vbTestWallet", self.handle)
        await context.add_init_script(INIT_SCRIPT)

    def _error(self, code: int, message: str) -> str:
        return json.dumps({"error": {"code": code, "message": message}})

    def _ok(self, result: Any) -> str:
        return json.dumps({"result": result})

    def _mine(self, address: str) -> bool:
        return isinstance(address, str) and address.lower() == self.acct.address.lower()

    def _sig(self, signable) -> str:
        sig = Account.sign_message(signable, self.acct.key).signature.hex()
        return "0x" + sig.removeprefix("0x")

    async def handle(self, method: str, params_json: str) -> str:
        params = json.loads(params_json)
        if method in ("eth_requestAccounts", "eth_accounts"):
            if self.refuse and method == "eth_requestAccounts":
                return self._error(4001, "User rejected the request.")
            return self._ok([self.acct.address.lower()])
        if method == "eth_chainId":
            return self._ok(hex(self.chain_id))
        if method == "personal_sign":
            data, address = params
            if not self._mine(address):
                return self._error(4100, f"the wallet does not hold {address}")
            if self.refuse:
                return self._error(4001, "User rejected the request.")
            raw = bytes.fromhex(data.removeprefix("0x"))
            sig = self._sig(encode_defunct(primitive=raw))
            self.signed.append(Signed(method, raw.decode("utf-8"), sig))
            return self._ok(sig)
        if method == "eth_signTypedData_v4":
            address, typed_json = params
            if not self._mine(address):
                return self._error(4100, f"the wallet does not hold {address}")
            if self.refuse:
                return self._error(4001, "User rejected the request.")
            typed = json.loads(typed_json)
            sig = self._sig(encode_typed_data(full_message=typed))
            self.signed.append(Signed(method, typed, sig))
            return self._ok(sig)
        return self._error(4200, f"unsupported method {method}")

    def last(self, method: str) -> Signed:
        return next(s for s in reversed(self.signed) if s.method == method)
