// Keccak-256 (the Ethereum hash: Keccak with the original 0x01 padding, not SHA3-256's 0x06),
// in plain JavaScript over BigInt-free 32-bit halves. Rate 1088 bits (136 bytes), capacity 512.
// Tested against known vectors and against the server's eth_utils.keccak in the browser tests.

const RC = [ // round constants as [low, high] 32-bit halves
  [0x00000001, 0x00000000], [0x00008082, 0x00000000], [0x0000808a, 0x80000000], [0x80008000, 0x80000000],
  [0x0000808b, 0x00000000], [0x80000001, 0x00000000], [0x80008081, 0x80000000], [0x00008009, 0x80000000],
  [0x0000008a, 0x00000000], [0x00000088, 0x00000000], [0x80008009, 0x00000000], [0x8000000a, 0x00000000],
  [0x8000808b, 0x00000000], [0x0000008b, 0x80000000], [0x00008089, 0x80000000], [0x00008003, 0x80000000],
  [0x00008002, 0x80000000], [0x00000080, 0x80000000], [0x0000800a, 0x00000000], [0x8000000a, 0x80000000],
  [0x80008081, 0x80000000], [0x00008080, 0x80000000], [0x80000001, 0x00000000], [0x80008008, 0x80000000],
];
// rotation offsets r[x + 5y] and the pi permutation target of lane x + 5y
const ROT = [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14];
const PI = new Array(25);
for (let x = 0; x < 5; x++) for (let y = 0; y < 5; y++) PI[x + 5 * y] = y + 5 * ((2 * x + 3 * y) % 5);

function keccakF(lo, hi) {
  const cLo = new Int32Array(5), cHi = new Int32Array(5);
  const bLo = new Int32Array(25), bHi = new Int32Array(25);
  for (let round = 0; round < 24; round++) {
    // theta
    for (let x = 0; x < 5; x++) {
      cLo[x] = lo[x] ^ lo[x + 5] ^ lo[x + 10] ^ lo[x + 15] ^ lo[x + 20];
      cHi[x] = hi[x] ^ hi[x + 5] ^ hi[x + 10] ^ hi[x + 15] ^ hi[x + 20];
    }
    for (let x = 0; x < 5; x++) {
      const l1 = cLo[(x + 1) % 5], h1 = cHi[(x + 1) % 5];
      const dLo = cLo[(x + 4) % 5] ^ ((l1 << 1) | (h1 >>> 31));
      const dHi = cHi[(x + 4) % 5] ^ ((h1 << 1) | (l1 >>> 31));
      for (let y = 0; y < 25; y += 5) { lo[x + y] ^= dLo; hi[x + y] ^= dHi; }
    }
    // rho and pi
    for (let i = 0; i < 25; i++) {
      const r = ROT[i], l = lo[i], h = hi[i];
      let nl, nh;
      if (r === 0) { nl = l; nh = h; }
      else if (r < 32) { nl = (l << r) | (h >>> (32 - r)); nh = (h << r) | (l >>> (32 - r)); }
      else if (r === 32) { nl = h; nh = l; }
      else { const s = r - 32; nl = (h << s) | (l >>> (32 - s)); nh = (l << s) | (h >>> (32 - s)); }
      bLo[PI[i]] = nl; bHi[PI[i]] = nh;
    }
    // chi
    for (let y = 0; y < 25; y += 5) {
      for (let x = 0; x < 5; x++) {
        lo[x + y] = bLo[x + y] ^ (~bLo[(x + 1) % 5 + y] & bLo[(x + 2) % 5 + y]);
        hi[x + y] = bHi[x + y] ^ (~bHi[(x + 1) % 5 + y] & bHi[(x + 2) % 5 + y]);
      }
    }
    // iota
    lo[0] ^= RC[round][0];
    hi[0] ^= RC[round][1];
  }
}

// keccak256(bytes: Uint8Array) -> Uint8Array(32)
export function keccak256(bytes) {
  const RATE = 136;
  const lo = new Int32Array(25), hi = new Int32Array(25);
  const n = bytes.length;
  const padded = new Uint8Array((Math.floor(n / RATE) + 1) * RATE);
  padded.set(bytes);
  padded[n] ^= 0x01;
  padded[padded.length - 1] ^= 0x80;
  for (let off = 0; off < padded.length; off += RATE) {
    for (let i = 0; i < RATE / 8; i++) {
      const p = off + 8 * i;
      lo[i] ^= padded[p] | (padded[p + 1] << 8) | (padded[p + 2] << 16) | (padded[p + 3] << 24);
      hi[i] ^= padded[p + 4] | (padded[p + 5] << 8) | (padded[p + 6] << 16) | (padded[p + 7] << 24);
    }
    keccakF(lo, hi);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 4; i++) {
    for (let k = 0; k < 4; k++) {
      out[8 * i + k] = (lo[i] >>> (8 * k)) & 0xff;
      out[8 * i + 4 + k] = (hi[i] >>> (8 * k)) & 0xff;
    }
  }
  return out;
}

export function toHex(bytes) {
  let s = "0x";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

export function fromHex(hex) {
  const h = hex.startsWith("0x") || hex.startsWith("0X") ? hex.slice(2) : hex;
  if (h.length % 2 || /[^0-9a-fA-F]/.test(h)) throw new Error(`not hex: ${hex}`);
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
  return out;
}

export const utf8 = (text) => new TextEncoder().encode(text);
export const keccakHex = (bytes) => toHex(keccak256(bytes));
