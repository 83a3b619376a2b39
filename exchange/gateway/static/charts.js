// Small SVG charts (no library). Coordinates are display-only numbers.
const NS = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(w, h, label) {
  return el("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": label, preserveAspectRatio: "none",
                     class: "svgchart" });
}

function empty(container, text) {
  container.replaceChildren();
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  container.append(p);
}

// Depth chart: bids and asks as cumulative step areas over price.
export function depthChart(container, book, fmt) {
  const bids = book?.bids || [], asks = book?.asks || [];
  if (!bids.length && !asks.length) return empty(container, "The book is empty.");
  const W = 600, H = 240, L = 56, R = 10, T = 14, B = 30;
  const cum = (levels) => { let s = 0; return levels.map(([p, v]) => [p, (s += v)]); };
  const cb = cum(bids), ca = cum(asks);
  const prices = [...cb, ...ca].map((x) => x[0]);
  let pmin = Math.min(...prices), pmax = Math.max(...prices);
  const pad = Math.max(50, Math.round((pmax - pmin) * 0.08));
  pmin -= pad; pmax += pad;
  const vmax = Math.max(1, ...cb.map((x) => x[1]), ...ca.map((x) => x[1]));
  const x = (p) => L + ((p - pmin) / (pmax - pmin)) * (W - L - R);
  const y = (v) => H - B - (v / vmax) * (H - T - B);
  const best = bids.length ? fmt.price(bids[0][0]) : "–", ask = asks.length ? fmt.price(asks[0][0]) : "–";
  const s = svg(W, H, `Depth chart: ${bids.length} bid levels (best ${best} EUR/MWh), ${asks.length} ask levels ` +
                      `(best ${ask} EUR/MWh), up to ${fmt.kwh(vmax)} kWh cumulative`);
  const area = (pts, cls) => {
    if (!pts.length) return;
    let d = `M${x(pts[0][0])},${y(0)}`;
    let prev = 0;
    for (const [p, v] of pts) { d += ` L${x(p)},${y(prev)} L${x(p)},${y(v)}`; prev = v; }
    const endX = cls === "bid" ? L : W - R;
    d += ` L${endX},${y(prev)} L${endX},${y(0)} Z`;
    s.append(el("path", { d, class: `area-${cls}` }));
  };
  area(cb, "bid");
  area(ca, "ask");
  s.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  s.append(el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  s.append(el("text", { x: L, y: H - 8, class: "tick" }, fmt.price(pmin)));
  s.append(el("text", { x: W - R, y: H - 8, class: "tick end" }, fmt.price(pmax)));
  s.append(el("text", { x: (W + L) / 2, y: H - 8, class: "tick mid" }, "EUR/MWh"));
  s.append(el("text", { x: L - 4, y: T + 10, class: "tick end" }, fmt.kwh(vmax)));
  s.append(el("text", { x: L - 4, y: H - B, class: "tick end" }, "0"));
  s.append(el("text", { x: L + 8, y: T + 12, class: "lbl-bid" }, "■ bids"));
  s.append(el("text", { x: W - R - 8, y: T + 12, class: "lbl-ask end" }, "asks ■"));
  container.replaceChildren(s);
}

// Price (line) and volume (bars) of a product's trades over time.
export function priceVolumeChart(container, trades, fmt, tz) {
  if (!trades || !trades.length) return empty(container, "No trades in this product yet.");
  const W = 600, H = 240, L = 56, R = 10, T = 14, B = 30, VH = 60;
  const ts = trades.map((t) => Date.parse(t[0]));
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t0 === t1) { t0 -= 60000; t1 += 60000; }
  const ps = trades.map((t) => t[1]);
  let pmin = Math.min(...ps), pmax = Math.max(...ps);
  if (pmin === pmax) { pmin -= 100; pmax += 100; }
  const qmax = Math.max(...trades.map((t) => t[2]));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const yp = (p) => T + (1 - (p - pmin) / (pmax - pmin)) * (H - T - B - VH - 8);
  const yv = (q) => (q / qmax) * VH;
  const last = trades[trades.length - 1];
  const s = svg(W, H, `Price and volume: ${trades.length} trades, price ${fmt.price(pmin)} to ${fmt.price(pmax)} ` +
                      `EUR/MWh, last ${fmt.price(last[1])} EUR/MWh`);
  for (let i = 0; i < trades.length; i++) {
    const h = Math.max(1, yv(trades[i][2]));
    s.append(el("rect", { x: x(ts[i]) - 1, y: H - B - h, width: 2, height: h, class: "vol" }));
  }
  let d = "";
  trades.forEach((t, i) => { d += `${i ? " L" : "M"}${x(ts[i])},${yp(t[1])}`; });
  s.append(el("path", { d, class: "priceline" }));
  s.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  s.append(el("text", { x: L - 4, y: yp(pmax) + 4, class: "tick end" }, fmt.price(pmax)));
  s.append(el("text", { x: L - 4, y: yp(pmin) + 4, class: "tick end" }, fmt.price(pmin)));
  s.append(el("text", { x: L, y: H - 8, class: "tick" }, fmt.hm(new Date(t0).toISOString(), tz)));
  s.append(el("text", { x: W - R, y: H - 8, class: "tick end" }, fmt.hm(new Date(t1).toISOString(), tz)));
  s.append(el("text", { x: (W + L) / 2, y: H - 8, class: "tick mid" }, `bars: kWh (max ${fmt.kwh(qmax)})`));
  container.replaceChildren(s);
}

// Grouped bars: one group per x label, one bar per series (values are display numbers).
export function barChart(container, chart) {
  const xs = chart?.x || [], series = chart?.series || [];
  if (!xs.length || !series.length) return empty(container, "Nothing to plot yet.");
  const W = 600, H = 220, L = 56, R = 10, T = 28, B = 30;
  const vals = series.map((sr) => sr.values.map((v) => Number(v) || 0));
  const vmax = Math.max(1e-9, ...vals.flat());
  const gw = (W - L - R) / xs.length, bw = Math.max(1, (gw * 0.8) / series.length);
  const y = (v) => H - B - (Math.max(0, v) / vmax) * (H - T - B);
  const s = svg(W, H, `${chart.label}: ${series.map((sr) => sr.name).join(", ")} over ${xs.length} ${xs.length === 1 ? "period" : "periods"}, ` +
                      `up to ${vmax.toLocaleString("en")} ${chart.unit || ""}`);
  vals.forEach((vs, k) => vs.forEach((v, i) => {
    const x0 = L + i * gw + gw * 0.1 + k * bw;
    s.append(el("rect", { x: x0, y: y(v), width: Math.max(1, bw - 1), height: H - B - y(v), class: `bar s${k % 4}` }));
  }));
  s.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  s.append(el("text", { x: L - 4, y: T + 4, class: "tick end" }, vmax.toLocaleString("en")));
  s.append(el("text", { x: L, y: H - 8, class: "tick" }, xs[0]));
  if (xs.length > 1) s.append(el("text", { x: W - R, y: H - 8, class: "tick end" }, xs[xs.length - 1]));
  series.forEach((sr, k) => s.append(el("text", { x: L + 4 + k * 140, y: 12, class: `tick lbl s${k % 4}` }, `■ ${sr.name}`)));
  container.replaceChildren(s);
}

// Viridis (perceptually uniform, colour-vision-deficiency safe), 9 stops.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                 [92, 200, 99], [170, 220, 50], [253, 231, 37]];

export function viridis(t) {
  const u = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u)), f = u - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + (VIRIDIS[i + 1][k] - a) * f));
  // text colour with enough contrast on that background
  const lum = (0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]) / 255;
  return { bg: `rgb(${c[0]},${c[1]},${c[2]})`, fg: lum > 0.45 ? "#000" : "#fff" };
}
