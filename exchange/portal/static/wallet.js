// The member's wallet through the standard EIP-1193 provider (window.ethereum).
export class WalletError extends Error {
  constructor(kind, message) { super(message); this.kind = kind; }
}

export function provider() {
  return typeof window !== "undefined" && window.ethereum && typeof window.ethereum.request === "function"
    ? window.ethereum : null;
}

function explain(e, what) {
  // EIP-1193: 4001 user rejected, 4100 unauthorized, 4200 unsupported method, 4900/4901 disconnected
  const code = e && (e.code ?? e.data?.code);
  if (code === 4001) return new WalletError("refused", `You declined the ${what} in your wallet.`);
  if (code === 4100) return new WalletError("unauthorized", `The wallet did not authorise this site for the ${what}.`);
  if (code === 4200) return new WalletError("unsupported", `Your wallet does not support ${what}.`);
  if (code === 4900 || code === 4901) return new WalletError("disconnected", "Your wallet is not connected to a network.");
  return new WalletError("wallet", `The wallet failed the ${what}: ${e?.message || e}`);
}

async function call(method, params, what) {
  const p = provider();
  if (!p) throw new WalletError("none", "No Ethereum wallet was found in this browser.");
  try {
    return await p.request(params === undefined ? { method } : { method, params });
  } catch (e) {
    throw explain(e, what);
  }
}

export async function account() {
  const accounts = await call("eth_requestAccounts", undefined, "connection request");
  if (!accounts || !accounts.length) throw new WalletError("refused", "The wallet shared no account.");
  return accounts[0];
}

export const personalSign = (hexMessage, address) => call("personal_sign", [hexMessage, address], "sign-in signature");
export const signTypedData = (address, typed, what = "order signature") =>
  call("eth_signTypedData_v4", [address, JSON.stringify(typed)], what);
