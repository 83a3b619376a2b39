// Display formatting of the exchange's integers. The server sends energy in Wh,
// prices in ticks of 0.01 EUR/MWh and money in units of 1e-8 EUR (as decimal
// strings: they can exceed 2^53). Everything here is integer (BigInt) arithmetic
// until the final string; nothing accumulates floats.

const MINUS = "-";

function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// Fixed-point: integer `value` with `scale` decimals -> "1,234.567".
export function fixed(value, scale) {
  if (value === null || value === undefined || value === "") return "–";
  let v = BigInt(value);
  const neg = v < 0n;
  if (neg) v = -v;
  const base = 10n ** BigInt(scale);
  const int = group((v / base).toString());
  const frac = scale > 0 ? "." + (v % base).toString().padStart(scale, "0") : "";
  return (neg ? MINUS : "") + int + frac;
}

// Divide by 10^digits, rounding half to even (exact, BigInt).
export function roundHalfEven(value, digits) {
  let v = BigInt(value);
  const neg = v < 0n;
  if (neg) v = -v;
  const d = 10n ** BigInt(digits);
  let q = v / d;
  const r2 = (v % d) * 2n;
  if (r2 > d || (r2 === d && q % 2n === 1n)) q += 1n;
  return neg ? -q : q;
}

export const kwh = (wh) => fixed(wh, 3);                       // Wh -> kWh with 3 decimals
export const price = (ticks) => fixed(ticks, 2);               // ticks -> EUR/MWh
export const eur = (money) =>                                  // 1e-8 EUR -> EUR, cents half-even
  money === null || money === undefined ? "–" : fixed(roundHalfEven(money, 6), 2);
export const count = (n) => (n === null || n === undefined ? "–" : group(String(n)));

// "12.5" kW -> 12500 W, from the decimal string (no float parsing). null if malformed.
export function parseKwToW(text) {
  const m = /^\s*(\d+)(?:\.(\d{1,3}))?\s*$/.exec(text || "");
  if (!m) return null;
  return Number(BigInt(m[1]) * 1000n + BigInt((m[2] || "").padEnd(3, "0")));
}

export function shortAddr(a) {
  return a ? a.slice(0, 6) + "…" + a.slice(-4) : "";
}

const fmtCache = new Map();
function dtf(tz, opts) {
  const key = tz + JSON.stringify(opts);
  if (!fmtCache.has(key)) fmtCache.set(key, new Intl.DateTimeFormat("en-GB", { timeZone: tz, ...opts }));
  return fmtCache.get(key);
}
export const hm = (iso, tz) => dtf(tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(iso));
export const hms = (iso, tz) =>
  dtf(tz, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }).format(new Date(iso));
export const dayLabel = (iso, tz) => dtf(tz, { weekday: "short", day: "numeric", month: "short" }).format(new Date(iso));
export const dateTime = (iso, tz) =>
  dtf(tz, { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" })
    .format(new Date(iso));

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.trunc(seconds));
  const h = Math.trunc(s / 3600), m = Math.trunc((s % 3600) / 60);
  return h > 0 ? `${h} h ${m} min` : `${m} min`;
}
