// Small SVG charts (no library). Every chart sits next to a table with the same numbers;
// coordinates are display-only numbers, the values shown as text are exact.
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
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
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  container.replaceChildren(p);
}

// Depth: bids and asks as cumulative steps over price. book = {bids: [[price, wh]], asks: [...]}
export function depthChart(container, book, fmt) {
  const bids = book?.bids || [], asks = book?.asks || [];
  if (!bids.length && !asks.length) return empty(container, "The book is empty.");
  const W = 600, H = 240, L = 60, R = 10, T = 16, B = 30;
  const cum = (levels) => { let s = 0; return levels.map(([p, v]) => [p, (s += v)]); };
  const cb = cum(bids), ca = cum(asks);
  const prices = [...cb, ...ca].map((x) => x[0]);
  let pmin = Math.min(...prices), pmax = Math.max(...prices);
  const pad = Math.max(50, Math.round((pmax - pmin) * 0.08));
  pmin -= pad; pmax += pad;
  const vmax = Math.max(1, ...cb.map((x) => x[1]), ...ca.map((x) => x[1]));
  const x = (p) => L + ((p - pmin) / (pmax - pmin)) * (W - L - R);
  const y = (v) => H - B - (v / vmax) * (H - T - B);
  const s = svg(W, H, `Depth chart: ${bids.length} bid levels, ${asks.length} ask levels, ` +
                      `up to ${fmt.kwh(vmax)} kWh cumulative; the table beside it lists every level`);
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
  s.append(el("text", { x: L + 8, y: T + 12, class: "lbl-bid" }, "■ bids"));
  s.append(el("text", { x: W - R - 8, y: T + 12, class: "lbl-ask end" }, "asks ■ (dashed)"));
  container.replaceChildren(s);
}

// Grouped bars: x labels, series [{name, values: [Wh…]}] (integers, shown in kWh)
export function barChart(container, xs, series, label, fmt) {
  if (!xs.length) return empty(container, "No metered energy in this period.");
  const W = 600, H = 240, L = 60, R = 10, T = 30, B = 30;
  const vals = series.map((sr) => sr.values.map((v) => Number(v) || 0));
  const vmax = Math.max(1, ...vals.flat());
  const gw = (W - L - R) / xs.length, bw = Math.max(1, (gw * 0.8) / series.length);
  const y = (v) => H - B - (Math.max(0, v) / vmax) * (H - T - B);
  const s = svg(W, H, `${label}: ${series.map((sr) => sr.name).join(", ")} over ${xs.length} ` +
                      `${xs.length === 1 ? "period" : "periods"}, up to ${fmt.kwh(vmax)} kWh; the table lists every value`);
  vals.forEach((vs, k) => vs.forEach((v, i) => {
    const x0 = L + i * gw + gw * 0.1 + k * bw;
    s.append(el("rect", { x: x0, y: y(v), width: Math.max(1, bw - 1), height: H - B - y(v), class: `bar s${k % 4}` }));
  }));
  s.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  s.append(el("text", { x: L - 4, y: T + 4, class: "tick end" }, fmt.kwh(vmax)));
  s.append(el("text", { x: L - 4, y: H - B, class: "tick end" }, "0"));
  s.append(el("text", { x: L, y: H - 8, class: "tick" }, xs[0]));
  if (xs.length > 1) s.append(el("text", { x: W - R, y: H - 8, class: "tick end" }, xs[xs.length - 1]));
  series.forEach((sr, k) => s.append(el("text", { x: L + 4 + k * 130, y: 14, class: `tick lbl s${k % 4}` }, `■ ${sr.name}`)));
  container.replaceChildren(s);
}
