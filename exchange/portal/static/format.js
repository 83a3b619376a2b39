// Exact units. The exchange counts energy in Wh, prices in ticks of 0.01 EUR/MWh and money
// in units of 1e-8 EUR (money arrives as decimal strings: it can exceed 2^53). What the page
// sends is parsed from the typed decimal text into integers with BigInt, never through a float;
// what it shows is formatted with BigInt until the final string.

// The exact arithmetic is the operator page's (one implementation of half-even rounding and
// fixed-point formatting); the portal writes a true minus sign.
import { count, fixed as fixedAscii, roundHalfEven } from "../../operator/static/format.js";

export { count, roundHalfEven };

// Fixed-point: integer `value` with `scale` decimals -> "1,234.567" ("−1,234.567").
export const fixed = (value, scale) => fixedAscii(value, scale).replace(/^-/, "−");

export const kwh = (wh) => fixed(wh, 3);                       // Wh -> kWh, 3 decimals
export const price = (ticks) => fixed(ticks, 2);               // ticks -> EUR/MWh
// money units (1e-8 EUR; a number, a decimal string, or {"units": "…"}) -> EUR with cents, half-even
export function eur(money) {
  if (money === null || money === undefined) return "–";
  const units = typeof money === "object" ? money.units : money;
  return fixed(roundHalfEven(units, 6), 2);
}
// a ratio given as an exact decimal string ("0.4125") -> "41.25 %"
export function percent(ratio) {
  if (ratio === null || ratio === undefined) return "–";
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(ratio));
  if (!m) return String(ratio);
  const frac = (m[3] || "").padEnd(4, "0");
  const scaled = BigInt(m[2] + frac.slice(0, 4)); // ratio x 10^4 = percent x 100, truncated
  return (m[1] ? "−" : "") + fixed(scaled, 2) + " %";
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// "85.5" with scale 2 -> 8550n. Refuses more decimals than `scale` (no rounding of what the
// member typed), exponents, signs where not allowed, and anything that is not a plain decimal.
// Returns {value: BigInt} or {error: "…"}.
export function parseDecimal(text, scale, { negative = false, what = "value" } = {}) {
  const s = String(text ?? "").trim().replace(",", ".");
  const m = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(s);
  if (!s || !m || (m[2] === "" && (m[3] === undefined || m[3] === ""))) {
    return { error: `${what}: enter a decimal number like ${scale ? "12." + "5".padEnd(scale, "0") : "12"}` };
  }
  if (m[1] === "-" && !negative) return { error: `${what} cannot be negative` };
  const frac = m[3] || "";
  if (frac.length > scale) return { error: `${what}: at most ${scale} decimals` };
  let v = BigInt((m[2] || "0") + frac.padEnd(scale, "0"));
  if (m[1] === "-") v = -v;
  if (v > MAX_SAFE || v < -MAX_SAFE) return { error: `${what} is too large` };
  return { value: v };
}

// EUR/MWh text -> integer ticks (0.01 EUR/MWh); kWh text -> integer Wh.
export const parsePrice = (text) => parseDecimal(text, 2, { negative: true, what: "Price" });
export const parseKwh = (text) => parseDecimal(text, 3, { what: "Quantity" });

// A BigInt that fits a JSON integer exactly -> Number (for the wire); throws otherwise.
export function wireInt(v) {
  const b = BigInt(v);
  if (b > MAX_SAFE || b < -MAX_SAFE) throw new Error("integer beyond 2^53");
  return Number(b);
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
export const day = (iso, tz) => dtf(tz, { weekday: "short", day: "numeric", month: "short" }).format(new Date(iso));
export const dateTime = (iso, tz) =>
  dtf(tz, { day: "2-digit", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" })
    .format(new Date(iso));
export const shortTime = (iso, tz) =>
  dtf(tz, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(iso));
export const date = (iso, tz) => dtf(tz, { day: "numeric", month: "short", year: "numeric" }).format(new Date(iso));

// "20261122T1100Z-60" -> "22 Nov 12:00–13:00" in the community's time zone
export function productLabel(p, tz) {
  if (!p) return "";
  if (p.start && p.end) return `${day(p.start, tz)} ${hm(p.start, tz)}–${hm(p.end, tz)}`;
  return p.product_id || String(p);
}
