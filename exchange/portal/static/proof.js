// A trade's Merkle proof checked in the browser (docs/settlement.md, "Leaf encoding"):
//   leaf = keccak256(0x00 || abi.encode(uint64 trade_id, bytes32 keccak256(utf8(product_id)),
//                    address buyer, address seller, uint64 energy_wh, int64 price_ticks, bytes32 signatures_hash))
//   node = keccak256(0x01 || min(a, b) || max(a, b))
// The leaf is rebuilt from the trade's fields (never taken from the server), folded with the
// proof, and the result compared with the batch's root as the server read it from the chain.
import { keccak256, fromHex, toHex, utf8 } from "./keccak.js";

// a 32-byte big-endian two's-complement word of an integer (BigInt)
export function word(n) {
  let v = BigInt(n);
  if (v < 0n) v += 1n << 256n;
  const out = new Uint8Array(32);
  for (let i = 31; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

function addressWord(a) {
  const raw = fromHex(a);
  if (raw.length !== 20) throw new Error(`not an address: ${a}`);
  const out = new Uint8Array(32);
  out.set(raw, 12);
  return out;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function compare(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

export function inRange(t) {
  const id = BigInt(t.trade_id), e = BigInt(t.energy_wh), p = BigInt(t.price_ticks);
  return id >= 0n && id < 2n ** 64n && e >= 0n && e < 2n ** 64n && p >= -(2n ** 63n) && p < 2n ** 63n;
}

export function productHash(productId) {
  return keccak256(utf8(productId));
}

export function leafOf(tradeId, t) {
  if (!inRange({ trade_id: tradeId, energy_wh: t.energy_wh, price_ticks: t.price_ticks })) {
    throw new Error("a field is outside its ABI type's range");
  }
  const sig = fromHex(t.signatures_hash);
  if (sig.length !== 32) throw new Error("signatures_hash is not 32 bytes");
  const body = concat([word(tradeId), productHash(t.product_id), addressWord(t.buyer), addressWord(t.seller),
                       word(t.energy_wh), word(t.price_ticks), sig]);
  return keccak256(concat([new Uint8Array([0]), body]));
}

export function hashPair(a, b) {
  return compare(a, b) < 0 ? keccak256(concat([new Uint8Array([1]), a, b]))
                           : keccak256(concat([new Uint8Array([1]), b, a]));
}

// -> {ok, leaf, leafMatches, productHashMatches, root, chainRoot, steps: [hex…]}
export function verifyProof(p) {
  const t = p.trade;
  const leaf = leafOf(p.trade_id, t);
  let h = leaf;
  const steps = [];
  for (const sib of p.proof) {
    h = hashPair(h, fromHex(sib));
    steps.push(toHex(h));
  }
  const chainRoot = (p.chain_root || p.onchain_root || p.root || "").toLowerCase();
  const root = toHex(h);
  const leafHex = toHex(leaf);
  const productHashMatches = !t.product_hash || toHex(productHash(t.product_id)) === t.product_hash.toLowerCase();
  return { ok: root === chainRoot && productHashMatches, leaf: leafHex,
           leafMatches: !p.leaf || p.leaf.toLowerCase() === leafHex, productHashMatches,
           root, chainRoot, steps };
}
