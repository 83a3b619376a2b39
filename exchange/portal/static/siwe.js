// Sign-In with Ethereum (EIP-4361): the message text the wallet signs with personal_sign.
import { keccak256, utf8, toHex } from "./keccak.js";

// EIP-55 mixed-case checksum of an address (EIP-4361 requires the checksummed form).
export function checksumAddress(address) {
  const a = String(address).toLowerCase().replace(/^0x/, "");
  if (!/^[0-9a-f]{40}$/.test(a)) throw new Error(`not an Ethereum address: ${address}`);
  const h = toHex(keccak256(utf8(a))).slice(2);
  let out = "0x";
  for (let i = 0; i < 40; i++) out += parseInt(h[i], 16) >= 8 ? a[i].toUpperCase() : a[i];
  return out;
}

// The fields of GET /portal/siwe/nonce and the wallet's address -> the EIP-4361 message:
// "${domain} wants you to sign in with your Ethereum account:\n${address}\n\n${statement}\n\n
//  URI: …\nVersion: 1\nChain ID: …\nNonce: …\nIssued At: …\nExpiration Time: …"
export function siweMessage(f, address) {
  const lines = [`${f.domain} wants you to sign in with your Ethereum account:`, checksumAddress(address), ""];
  if (f.statement) lines.push(f.statement, "");
  lines.push(`URI: ${f.uri}`, `Version: ${f.version || "1"}`, `Chain ID: ${f.chain_id}`, `Nonce: ${f.nonce}`,
             `Issued At: ${f.issued_at}`);
  if (f.expiration_time) lines.push(`Expiration Time: ${f.expiration_time}`);
  return lines.join("\n");
}

// personal_sign takes the message as hex of its UTF-8 bytes
export const messageHex = (text) => toHex(utf8(text));
