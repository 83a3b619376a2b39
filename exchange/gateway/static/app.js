// The operator page: follows /ws/operator and renders the market, the community,
// settlement and flexibility; operator actions call /api/operator/... with the
// page session (cookie + X-Voltbourse-Page header).
import * as fmt from "./format.js";
import { barChart, depthChart, priceVolumeChart, viridis } from "./charts.js";

const $ = (sel) => document.querySelector(sel);
// Where this market's page lives: "/" for the deployment's default market, "/m/<id>/" for a
// community the platform hosts; every URL the page uses is under it.
const BASE = location.pathname.replace(/operator\/?$/, "");

const S = {
  tz: "UTC", market: null, products: [], books: new Map(), trades: [], members: new Map(), p2p: null, kpis: null,
  settlement: null, flexibility: null, selected: null, day: null, history: new Map(), connected: false,
  panels: new Map(),
};
const MAX_TRADES = 300;

// ------------------------------------------------------------------ helpers
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const who = (addr) => {
  const m = S.members.get(addr);
  return m && m.name ? m.name : fmt.shortAddr(addr);
};
const STATE_TEXT = { open: "open", closing_soon: "closing soon", closed: "closed", pre_open: "pre-open",
                     delivered: "delivered" };
const periodLabel = (p) => `${fmt.hm(p.start, S.tz)}–${fmt.hm(p.end, S.tz)}`;

// ------------------------------------------------------------------ render scheduling
const dirty = new Set();
let scheduled = false;
function schedule(...parts) {
  parts.forEach((p) => dirty.add(p));
  if (scheduled) return;
  scheduled = true;
  const run = () => {
    if (!scheduled) return;
    scheduled = false;
    const parts = [...dirty];
    dirty.clear();
    for (const p of parts) {
      try { RENDER[p](); } catch (e) { console.error("render", p, e); }
    }
  };
  requestAnimationFrame(run);
  setTimeout(run, 150); // hidden tabs do not run animation frames
}

// ------------------------------------------------------------------ feed
let ws = null, backoff = 500;
function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${BASE}ws/operator`;
  ws = new WebSocket(url);
  ws.onopen = () => { backoff = 500; setConn(true); };
  ws.onmessage = (ev) => { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  ws.onclose = async (ev) => {
    setConn(false, ev.code);
    const r = await fetch(`${BASE}operator/session`, { credentials: "same-origin" }).catch(() => null);
    if (r && r.status === 401) { location.href = `${BASE}operator/login`; return; }
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}
function setConn(ok, code) {
  S.connected = ok;
  const c = $("#conn");
  c.textContent = ok ? "live" : `disconnected${code ? ` (${code})` : ""}, retrying…`;
  c.className = "conn " + (ok ? "ok" : "bad");
}
function requestHistory(pid) {
  if (ws && ws.readyState === WebSocket.OPEN && pid) ws.send(JSON.stringify({ type: "history", product_id: pid }));
}

function onMessage(m) {
  switch (m.topic) {
    case "hello": S.tz = m.timezone || "UTC"; $("#market-id").textContent = m.market_id; break;
    case "market": S.market = m; S.tz = m.timezone || S.tz; schedule("market"); break;
    case "members":
      S.members = new Map(m.members.map((x) => [x.address, x]));
      schedule("members", "p2p", "trades");
      break;
    case "products": S.products = m.products; S.now = m.now; schedule("products", "selection", "market"); break;
    case "book": S.books.set(m.product_id, m); if (m.product_id === S.selected) schedule("book"); break;
    case "trades": {
      if (m.snapshot) S.trades = m.trades.slice().reverse();
      else {
        for (const t of m.trades) {
          S.trades.unshift(t);
          const hist = S.history.get(t.product_id);
          if (hist) hist.push([t.ts, t.price, t.quantity]);
        }
        S.trades.length = Math.min(S.trades.length, MAX_TRADES);
      }
      schedule("trades", "pv");
      break;
    }
    case "history": S.history.set(m.product_id, m.trades); if (m.product_id === S.selected) schedule("pv"); break;
    case "p2p": S.p2p = m; schedule("p2p"); break;
    case "kpis": S.kpis = m; schedule("kpis"); break;
    case "settlement": S.settlement = m; schedule("settlement"); break;
    case "flexibility": S.flexibility = m; schedule("flex"); break;
    default:
      // a subsystem's panel (exchange.gateway.feed: "panel.<name>" topics)
      if (typeof m.topic === "string" && m.topic.startsWith("panel.")) { S.panels.set(m.topic, m); schedule("panels"); }
      break;
  }
}

// ------------------------------------------------------------------ selection
function select(pid, fromUser) {
  if (!pid || pid === S.selected) return;
  S.selected = pid;
  if (fromUser) S.userSelected = true;
  const p = S.products.find((x) => x.product_id === pid);
  if (p) S.day = p.delivery_day;
  if (fromUser) history.replaceState(null, "", `#p=${encodeURIComponent(pid)}`);
  if (!S.history.has(pid)) requestHistory(pid);
  schedule("products", "selection", "book", "trades", "pv");
}
function autoSelect() {
  const fromHash = decodeURIComponent((location.hash.match(/^#p=(.+)$/) || [])[1] || "");
  if (!S.selected && fromHash && S.products.some((p) => p.product_id === fromHash)) return select(fromHash, true);
  const cur = S.products.find((p) => p.product_id === S.selected);
  // keep the operator's choice; an automatic choice follows the market to the next open product
  if (cur && (S.userSelected || cur.state === "open")) return;
  const open = S.products.find((p) => p.state === "open") || cur || S.products[0];
  if (open && open.product_id !== S.selected) { S.selected = null; select(open.product_id); }
}

// ------------------------------------------------------------------ renderers
const RENDER = {
  market() {
    const m = S.market;
    if (!m) return;
    $("#market-id").textContent = m.market_id;
    const b = $("#market-state");
    b.textContent = m.halted ? `Halted${m.halt_reason ? `: ${m.halt_reason}` : ""}` : "Trading";
    b.className = "badge " + (m.halted ? "halted" : "running");
    b.dataset.halted = String(m.halted);
    $("#clock").textContent = fmt.dateTime(m.now, S.tz);
    $("#clock").setAttribute("datetime", m.now);
    $("#halt-btn").disabled = m.halted;
    $("#resume-btn").disabled = !m.halted;
  },

  products() {
    autoSelect();
    const box = $("#products");
    const days = [...new Set(S.products.map((p) => p.delivery_day))];
    if (!days.includes(S.day)) {
      const sel = S.products.find((p) => p.product_id === S.selected);
      const open = S.products.find((p) => p.state === "open");
      S.day = sel ? sel.delivery_day : open ? open.delivery_day : days[0];
    }
    $("#products-day").textContent = S.day ? `delivery day ${S.day} (${S.tz})` : "";
    $("#days").replaceChildren(...days.map((d) => {
      const ps = S.products.filter((p) => p.delivery_day === d);
      const open = ps.filter((p) => p.state === "open").length;
      return h("button", { type: "button", class: `day${d === S.day ? " selected" : ""}`, "aria-pressed": String(d === S.day),
                           "data-day": d, onclick: () => { S.day = d; schedule("products"); } },
        `${fmt.dayLabel(ps[0].start, S.tz)}`, h("span", { class: "day-note",
          text: open ? ` ${open}/${ps.length} open` : ` ${ps.length} products` }));
    }));
    const tiles = S.products.filter((p) => p.delivery_day === S.day).map((p) => {
      const sel = p.product_id === S.selected;
      const last = p.last_price === null ? "–" : fmt.price(p.last_price);
      const label = `${p.delivery_day} ${periodLabel(p)}, ${STATE_TEXT[p.display] || p.display}` +
        (p.display === "open" || p.display === "closing_soon" ? `, gate in ${fmt.duration(p.gate_in_s)}` : "") +
        `, last price ${last} EUR/MWh, ${fmt.kwh(p.volume_wh)} kWh traded`;
      return h("button", { type: "button", class: `tile st-${p.display}${sel ? " selected" : ""}`,
                           "aria-pressed": String(sel), "aria-label": label, "data-product-id": p.product_id,
                           "data-display": p.display, onclick: () => select(p.product_id, true) },
        h("span", { class: "tile-time", text: periodLabel(p) }),
        h("span", { class: "tile-state", text: STATE_TEXT[p.display] || p.display }),
        h("span", { class: "tile-price", text: last }),
        h("span", { class: "tile-vol", text: `${fmt.kwh(p.volume_wh)} kWh` }));
    });
    if (!tiles.length) box.replaceChildren(h("p", { class: "empty", text: "No products listed yet." }));
    else box.replaceChildren(...tiles);
    renderProductOptions();
  },

  selection() {
    const p = S.products.find((x) => x.product_id === S.selected);
    $("#sel-product").textContent = p ? `${p.delivery_day} ${periodLabel(p)} (${p.product_id})` : "–";
    const st = $("#sel-state");
    st.textContent = p ? STATE_TEXT[p.display] || p.display : "";
    st.className = p ? `st st-${p.display}` : "st";
  },

  book() {
    const book = S.books.get(S.selected);
    depthChart($("#depth"), book, fmt);
    const tb = $("#ladder tbody");
    if (!book || (!book.bids.length && !book.asks.length)) {
      tb.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty", text: "The book is empty." })));
      return;
    }
    const N = 10;
    const asks = book.asks.slice(0, N).reverse(), bids = book.bids.slice(0, N);
    const vmax = Math.max(1, ...asks.map((l) => l[1]), ...bids.map((l) => l[1]));
    const row = (side, [p, v, n]) => {
      const bar = h("span", { class: `bar bar-${side}` });
      bar.style.width = `${Math.max(2, Math.round((v / vmax) * 100))}%`;
      const vol = h("td", { class: `num vol-${side}` }, bar, h("span", { class: "v", text: fmt.kwh(v) }));
      const cells = side === "ask"
        ? [h("td", {}), h("td", {}), h("th", { scope: "row", class: "num price ask", text: fmt.price(p) }), vol,
           h("td", { class: "num", text: n })]
        : [h("td", { class: "num", text: n }), vol, h("th", { scope: "row", class: "num price bid", text: fmt.price(p) }),
           h("td", {}), h("td", {})];
      return h("tr", { class: `lvl-${side}`, "data-side": side, "data-price": p, "data-wh": v }, ...cells);
    };
    const spread = book.asks.length && book.bids.length ? book.asks[0][0] - book.bids[0][0] : null;
    tb.replaceChildren(...asks.map((l) => row("ask", l)),
      h("tr", { class: "spread" }, h("td", { colspan: 5,
        text: spread === null ? "one-sided book" : `spread ${fmt.price(spread)} EUR/MWh` })),
      ...bids.map((l) => row("bid", l)));
  },

  trades() {
    const all = $("#all-trades").checked;
    const rows = S.trades.filter((t) => all || t.product_id === S.selected).slice(0, 50);
    const tb = $("#trades tbody");
    if (!rows.length) {
      tb.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty", text: "No trades yet." })));
      return;
    }
    tb.replaceChildren(...rows.map((t) => h("tr", { "data-trade-id": t.trade_id, "data-product-id": t.product_id },
      h("td", { text: fmt.hms(t.ts, S.tz) }),
      h("td", { text: productShort(t.product_id) }),
      h("td", { class: "num", text: fmt.price(t.price) }),
      h("td", { class: "num", text: fmt.kwh(t.quantity) }),
      h("td", { class: "who", text: `${who(t.seller)} → ${who(t.buyer)}`, title: `${t.seller} → ${t.buyer}` }))));
  },

  pv() { priceVolumeChart($("#pv"), S.history.get(S.selected) || [], fmt, S.tz); },

  members() {
    const sel = $("#cancel-member"), keep = sel.value;
    const ms = [...S.members.values()].sort((a, b) => (a.name || a.address).localeCompare(b.name || b.address));
    sel.replaceChildren(...ms.map((m) => h("option", { value: m.address,
      text: `${m.name || fmt.shortAddr(m.address)} (${m.role}) ${fmt.shortAddr(m.address)}` })));
    if (keep) sel.value = keep;
  },

  kpis() {
    const k = S.kpis;
    if (!k) return;
    const card = (id, label, value, unit, note) => h("div", { class: "kpi", role: "listitem", "data-kpi": id },
      h("span", { class: "kpi-label", text: label }),
      h("span", { class: "kpi-value" }, h("strong", { text: value }), unit ? ` ${unit}` : ""),
      note ? h("span", { class: "kpi-note", text: note }) : null);
    const cards = [
      card("traded_energy", "Traded energy", fmt.kwh(k.traded_energy_wh), "kWh", `${fmt.count(k.trades)} trades`),
      card("p2p_energy", "P2P volume", fmt.kwh(k.p2p_energy_wh), "kWh", `${fmt.eur(k.p2p_money)} EUR`),
      card("traded_value", "Traded value", fmt.eur(k.traded_money), "EUR"),
      card("vwap", "Average price", k.vwap_ticks === null ? "–" : fmt.price(k.vwap_ticks), "EUR/MWh", "volume-weighted"),
      card("members_trading", "Members trading", `${k.members_trading} / ${k.members}`),
      card("savings", "Savings vs grid only", fmt.eur(k.savings_money), "EUR",
           "buyers' retail tariff minus sellers' feed-in tariff, per kWh traded"),
    ];
    for (const [key, v] of Object.entries(k.community || {})) cards.push(card(key, key.replaceAll("_", " "), String(v)));
    $("#kpis").replaceChildren(...cards);
  },

  p2p() {
    const m = S.p2p;
    const heat = $("#p2p-heat"), list = $("#p2p-list");
    if (!m || !m.cells.length) {
      heat.replaceChildren(h("p", { class: "empty", text: "No trades yet." }));
      list.replaceChildren();
      $("#p2p-legend").replaceChildren();
      return;
    }
    const sellers = [...new Set(m.cells.map((c) => c.seller))].sort((a, b) => who(a).localeCompare(who(b)));
    const buyers = [...new Set(m.cells.map((c) => c.buyer))].sort((a, b) => who(a).localeCompare(who(b)));
    const cell = new Map(m.cells.map((c) => [`${c.seller}|${c.buyer}`, c]));
    const max = Math.max(...m.cells.map((c) => c.energy_wh));
    const rowTot = new Map(), colTot = new Map();
    for (const c of m.cells) {
      const r = rowTot.get(c.seller) || { wh: 0, money: 0n }, k = colTot.get(c.buyer) || { wh: 0, money: 0n };
      r.wh += c.energy_wh; r.money += BigInt(c.money); k.wh += c.energy_wh; k.money += BigInt(c.money);
      rowTot.set(c.seller, r); colTot.set(c.buyer, k);
    }
    const head = h("tr", {}, h("th", { scope: "col", class: "corner", text: "seller \\ buyer" }),
      ...buyers.map((b) => h("th", { scope: "col", class: "colhead", title: b }, h("span", { text: who(b) }))),
      h("th", { scope: "col", class: "total", text: "sold kWh" }));
    const rows = sellers.map((s) => h("tr", {}, h("th", { scope: "row", class: "rowhead", title: s, text: who(s) }),
      ...buyers.map((b) => {
        const c = cell.get(`${s}|${b}`);
        if (!c) return h("td", { class: "heat zero", "aria-label": `${who(s)} to ${who(b)}: nothing` });
        const col = viridis(c.energy_wh / max);
        const text = `${who(s)} → ${who(b)}: ${fmt.kwh(c.energy_wh)} kWh, ${fmt.eur(c.money)} EUR, ${c.trades} trades`;
        const td = h("td", { class: "heat", tabindex: 0, "aria-label": text, "data-tip": text,
                             "data-seller": s, "data-buyer": b, "data-wh": c.energy_wh, "data-money": c.money });
        td.style.background = col.bg;
        td.style.color = col.fg;
        return td;
      }),
      h("td", { class: "total num", "data-row-total": s, "data-wh": rowTot.get(s).wh,
                "data-money": rowTot.get(s).money.toString(), text: fmt.kwh(rowTot.get(s).wh) })));
    const foot = h("tr", {}, h("th", { scope: "row", class: "total", text: "bought kWh" }),
      ...buyers.map((b) => h("td", { class: "total num", "data-col-total": b, "data-wh": colTot.get(b).wh,
                                     "data-money": colTot.get(b).money.toString(), text: fmt.kwh(colTot.get(b).wh) })),
      h("td", { class: "total num grand", id: "p2p-grand", "data-wh": m.total_energy_wh, "data-money": m.total_money,
                text: `${fmt.kwh(m.total_energy_wh)} kWh / ${fmt.eur(m.total_money)} EUR` }));
    heat.replaceChildren(h("table", { class: "heatmap", id: "p2p-table",
                                      "aria-label": "Energy traded from each seller (rows) to each buyer (columns)" },
      h("thead", {}, head), h("tbody", {}, ...rows), h("tfoot", {}, foot)));
    // legend
    const steps = [0, 0.25, 0.5, 0.75, 1].map((t) => {
      const c = viridis(t), sw = h("span", { class: "swatch" });
      sw.style.background = c.bg;
      return h("span", { class: "legend-step" }, sw, `${fmt.kwh(Math.round(max * t))}`);
    });
    $("#p2p-legend").replaceChildren(h("span", { class: "muted", text: "kWh per pair: " }), ...steps);
    // table alternative
    const sorted = [...m.cells].sort((a, b) => b.energy_wh - a.energy_wh);
    list.replaceChildren(h("table", { class: "plain", id: "p2p-pairs" },
      h("caption", { text: "Energy and value traded per seller and buyer pair" }),
      h("thead", {}, h("tr", {}, ...["Seller", "Buyer", "kWh", "EUR", "Trades"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...sorted.map((c) => h("tr", { "data-wh": c.energy_wh, "data-money": c.money },
        h("td", { text: who(c.seller), title: c.seller }), h("td", { text: who(c.buyer), title: c.buyer }),
        h("td", { class: "num", text: fmt.kwh(c.energy_wh) }), h("td", { class: "num", text: fmt.eur(c.money) }),
        h("td", { class: "num", text: c.trades })))),
      h("tfoot", {}, h("tr", {}, h("th", { scope: "row", colspan: 2, text: "Total" }),
        h("td", { class: "num", text: fmt.kwh(m.total_energy_wh) }), h("td", { class: "num", text: fmt.eur(m.total_money) }),
        h("td", { class: "num", text: m.trades })))));
  },

  panels() {
    const box = $("#panels"), nav = $("#panel-links");
    const sections = [], links = [];
    for (const [topic, p] of [...S.panels.entries()].sort()) {
      const id = `panel-${topic.slice(6).replace(/[^a-z0-9-]/gi, "-")}`;
      const cards = (p.cards || []).map((c) => h("div", { class: "kpi", role: "listitem", "data-card": c.id || c.label },
        h("span", { class: "kpi-label", text: c.label }),
        h("span", { class: "kpi-value" }, h("strong", { text: c.value ?? "–" }), c.unit ? ` ${c.unit}` : ""),
        c.note ? h("span", { class: "kpi-note", text: c.note }) : null));
      const parts = [h("h2", { id: `${id}-h`, text: p.title || topic.slice(6) })];
      if (p.note) parts.push(h("p", { class: "muted small", text: p.note }));
      if (cards.length) parts.push(h("div", { class: "kpis", role: "list" }, ...cards));
      if (p.chart) {
        const c = h("div", { class: "chart", "data-chart": id });
        barChart(c, p.chart);
        parts.push(h("div", { class: "card" }, h("h3", { text: p.chart.label }), c));
      }
      for (const t of p.tables || []) {
        parts.push(h("div", { class: "card scroll" }, h("table", { class: "plain", "data-table": t.id || t.caption },
          h("caption", { text: t.caption }),
          h("thead", {}, h("tr", {}, ...t.columns.map((c) => h("th", { scope: "col", text: c })))),
          h("tbody", {}, ...t.rows.map((r) => h("tr", {}, ...r.map((v, i) => i === 0
            ? h("th", { scope: "row", text: String(v) })
            : h("td", { class: typeof v === "string" && /^-?[0-9][0-9,.]*$/.test(v) ? "num" : "", text: String(v) }))))))));
      }
      sections.push(h("section", { id, class: "panel", "aria-labelledby": `${id}-h`, "data-panel": topic }, ...parts));
      links.push(h("a", { href: `#${id}`, text: p.title || topic.slice(6) }));
    }
    box.replaceChildren(...sections);
    nav.replaceChildren(...links);
  },

  settlement() {
    const s = S.settlement, box = $("#settlement");
    if (!s) return;
    const stateBadge = (st) => h("span", { class: `st st-batch-${st}`, text: st });
    const rec = s.reconcile;
    const summary = h("div", { class: "kpis", role: "list" },
      h("div", { class: "kpi", role: "listitem" }, h("span", { class: "kpi-label", text: "Last anchored block" }),
        h("span", { class: "kpi-value" }, h("strong", { text: s.last_anchored_block ?? "–" }))),
      h("div", { class: "kpi", role: "listitem" }, h("span", { class: "kpi-label", text: "Trades awaiting a batch" }),
        h("span", { class: "kpi-value" }, h("strong", { text: fmt.count(s.pending_trades) }))),
      h("div", { class: `kpi ${rec ? (rec.ok ? "ok" : "bad") : ""}`, role: "listitem", id: "reconcile" },
        h("span", { class: "kpi-label", text: "Reconciliation" }),
        h("span", { class: "kpi-value" }, h("strong", { text: rec ? (rec.ok ? "✓ consistent" : "✗ differences") : "not run" })),
        rec ? h("span", { class: "kpi-note", text: `checked ${fmt.dateTime(rec.checked_at, S.tz)}` }) : null),
      s.chain_id !== undefined ? h("div", { class: "kpi", role: "listitem" }, h("span", { class: "kpi-label", text: "Chain" }),
        h("span", { class: "kpi-value" }, h("strong", { text: `id ${s.chain_id}` })),
        s.registry ? h("span", { class: "kpi-note mono", title: s.registry, text: `registry ${fmt.shortAddr(s.registry)}` })
          : null) : null);
    const parts = [];
    if (s.alert) parts.push(h("p", { class: "alert", role: "alert", text: s.alert }));
    parts.push(summary);
    if (rec && !rec.ok && rec.differences?.length) {
      parts.push(h("ul", { class: "differences", "aria-label": "Reconciliation differences" },
        ...rec.differences.map((d) => h("li", { text: d }))));
    }
    const batches = s.batches || [];
    parts.push(h("div", { class: "scroll" }, h("table", { class: "plain", id: "batches" },
      h("caption", { text: "Settlement batches (latest first)" }),
      h("thead", {}, h("tr", {}, ...["Batch", "State", "Trades", "Trade ids", "Merkle root", "Transaction", "Block",
                                      "Anchored"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...(batches.length ? batches.map((b) => h("tr", { "data-batch": b.batch_id },
        h("td", { class: "num", text: b.batch_id }), h("td", {}, stateBadge(b.state)),
        h("td", { class: "num", text: fmt.count(b.trade_count) }),
        h("td", { class: "num", text: `${b.first_trade_id}–${b.last_trade_id}` }),
        h("td", { class: "mono", title: b.root, text: fmt.shortAddr(b.root) }),
        h("td", { class: "mono", title: b.tx_hash || "", text: b.tx_hash ? fmt.shortAddr(b.tx_hash) : "–" }),
        h("td", { class: "num", text: b.block ?? "–" }),
        h("td", { text: b.anchored_at ? fmt.dateTime(b.anchored_at, S.tz) : "–" })))
        : [h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No batches yet." }))])))));
    box.replaceChildren(...parts);
  },

  flex() {
    const f = S.flexibility, box = $("#flex");
    if (!f) return;
    const TITLES = { offers: "Offers", events: "Events", bids: "Balancing-market bids", activations: "Activations",
                     delivery: "Delivery vs baseline", shares: "Revenue shares" };
    const keys = [...Object.keys(TITLES), ...Object.keys(f).filter((k) => !(k in TITLES) && Array.isArray(f[k]))];
    box.replaceChildren(...keys.filter((k) => k in f || k in TITLES).map((k) => {
      const rows = Array.isArray(f[k]) ? f[k] : [];
      const title = TITLES[k] || k;
      if (!rows.length) return h("div", { class: "card", "data-flex": k }, h("h3", { text: title }),
                                 h("p", { class: "empty", text: "None yet." }));
      const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
      return h("div", { class: "card", "data-flex": k }, h("h3", { text: title }), h("div", { class: "scroll" },
        h("table", { class: "plain" }, h("caption", { class: "sr-only", text: title }),
          h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col", text: c.replaceAll("_", " ") })))),
          h("tbody", {}, ...rows.map((r) => h("tr", {}, ...cols.map((c) => flexCell(c, r[c]))))))));
    }));
  },
};

// Generic flexibility values: format by field-name suffix, keep the integer otherwise.
function flexCell(col, v) {
  let text;
  if (v === null || v === undefined) text = "–";
  else if (typeof v === "object") text = JSON.stringify(v);
  else if (/_wh$/.test(col) && Number.isInteger(v)) text = `${fmt.kwh(v)} kWh`;
  else if (/_w$/.test(col) && Number.isInteger(v)) text = `${fmt.kwh(v)} kW`;
  else if (/(_ticks|^price)$/.test(col) && Number.isInteger(v)) text = `${fmt.price(v)} EUR/MWh`;
  else if (/(money|_units|revenue|amount)$/.test(col) && /^-?\d+$/.test(String(v))) text = `${fmt.eur(v)} EUR`;
  else if (member(v)) text = who(v);
  else text = String(v);
  return h("td", { text, title: typeof v === "string" ? v : undefined,
                   class: typeof v === "number" ? "num" : undefined });
}
const member = (v) => typeof v === "string" && /^0x[0-9a-fA-F]{40}$/.test(v);

function productShort(pid) {
  const p = S.products.find((x) => x.product_id === pid);
  return p ? periodLabel(p) : pid;
}

function renderProductOptions() {
  const fill = (sel, first) => {
    const keep = sel.value;
    const opts = S.products.filter((p) => p.state !== "delivered").map((p) =>
      h("option", { value: p.product_id, text: `${p.delivery_day} ${periodLabel(p)} (${STATE_TEXT[p.display]})` }));
    sel.replaceChildren(...(first ? [first] : []), ...opts);
    if (keep && [...sel.options].some((o) => o.value === keep)) sel.value = keep;
  };
  fill($("#cancel-product"), h("option", { value: "", text: "all products" }));
  fill($("#flex-product"));
}

// ------------------------------------------------------------------ actions
function confirmDialog(title, text) {
  const d = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("#confirm-cancel").focus();
  });
}

async function api(method, path, body) {
  const r = await fetch(BASE + path.replace(/^\//, ""), {
    method, credentials: "same-origin",
    headers: { "X-Voltbourse-Page": "1", ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const text = await r.text();
  try { data = JSON.parse(text); } catch { data = { message: text.trim() } }
  if (!r.ok) {
    const msg = data && (data.message || data.error) ? `${data.error ? data.error + ": " : ""}${data.message || ""}`
      : `HTTP ${r.status}`;
    throw new Error(`${r.status} ${msg}${data && data.request_id ? ` (request ${data.request_id})` : ""}`);
  }
  return data;
}

function status(text, ok) {
  const s = $("#action-status");
  s.textContent = text;
  s.className = "action-status " + (ok ? "ok" : "bad");
}

async function act(title, question, method, path, body, done) {
  if (!(await confirmDialog(title, question))) { status("Cancelled: nothing was changed.", true); return; }
  try {
    const res = await api(method, path, body);
    status(done(res), true);
  } catch (e) {
    status(`${title} failed: ${e.message}`, false);
  }
}

function wireActions() {
  $("#halt-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const reason = $("#halt-reason").value.trim() || "operator halt";
    act("Halt the market", `Halt market ${S.market?.market_id ?? ""}? No new orders or modifies will be accepted ` +
        `(cancels still work). Reason: "${reason}".`, "POST", "/api/operator/market/halt", { reason },
        (r) => `Market halted (seq ${r.seq}).`);
  });
  $("#resume-btn").addEventListener("click", () =>
    act("Resume the market", `Resume trading on market ${S.market?.market_id ?? ""}?`, "POST",
        "/api/operator/market/resume", {}, (r) => `Market resumed (seq ${r.seq}).`));
  $("#cancel-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const addr = $("#cancel-member").value, pid = $("#cancel-product").value;
    if (!addr) { status("Choose a member first.", false); return; }
    act("Cancel a member's orders", `Cancel every resting order of ${who(addr)} (${addr})` +
        (pid ? ` in ${productShort(pid)} (${pid})` : " in all products") + "?", "POST",
        `/api/operator/members/${addr}/cancel-all`, pid ? { product_id: pid } : {},
        (r) => `Cancelled ${r.cancelled} order(s) of ${who(addr)}.`);
  });
  $("#flex-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const pid = $("#flex-product").value, direction = $("#flex-direction").value;
    const p = S.products.find((x) => x.product_id === pid);
    const raw = $("#flex-power").value.trim();
    const target_w = raw === "" ? null : fmt.parseKwToW(raw);
    if (!p) { status("Choose a delivery period first.", false); return; }
    if (target_w !== null && (Number.isNaN(target_w) || target_w <= 0) || (raw !== "" && target_w === null)) {
      status("Power: a positive number of kW with at most 3 decimals, or empty for every eligible offer.", false);
      return;
    }
    const body = { period_start: p.start, direction, ...(target_w === null ? {} : { target_w }) };
    act("Open a flexibility event", `Open a ${direction} flexibility event ` +
        `${target_w === null ? "inviting every eligible offer" : `of ${fmt.kwh(target_w)} kW`} for ` +
        `${p.delivery_day} ${periodLabel(p)} (${pid})?`, "POST", "/api/operator/flexibility/events", body,
        (r) => `Flexibility event opened${r && r.event_id !== undefined ? ` (event ${r.event_id})` : ""}.`);
  });
  $("#all-trades").addEventListener("change", () => schedule("trades"));
  $("#p2p-toggle").addEventListener("click", (ev) => {
    const table = ev.currentTarget.getAttribute("aria-pressed") !== "true";
    ev.currentTarget.setAttribute("aria-pressed", String(table));
    ev.currentTarget.textContent = table ? "Show as heat map" : "Show as table";
    $("#p2p-heat").hidden = table;
    $("#p2p-list").hidden = !table;
  });
  // heat-map tooltip on hover and keyboard focus
  const tip = $("#p2p-tip");
  const show = (ev) => {
    const td = ev.target.closest("td.heat[data-tip]");
    if (!td) return;
    tip.textContent = td.dataset.tip;
    tip.hidden = false;
    const r = td.getBoundingClientRect();
    tip.style.left = `${Math.max(4, Math.min(window.innerWidth - 264, r.left))}px`;
    tip.style.top = `${Math.min(window.innerHeight - 60, r.bottom + 6)}px`;
  };
  const hide = () => { tip.hidden = true; };
  const heat = $("#p2p-heat");
  heat.addEventListener("mouseover", show);
  heat.addEventListener("focusin", show);
  heat.addEventListener("mouseout", hide);
  heat.addEventListener("focusout", hide);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") hide(); });
}

wireActions();
// ------------------------------------------------------------------ market switcher
// The platform's communities (GET api/markets: ids, names, paths; public): each has its own
// operator page and token, so switching opens that page (its login when not signed in there).
async function loadMarkets() {
  const r = await fetch(`${BASE}api/markets`, { credentials: "same-origin" }).catch(() => null);
  if (!r || !r.ok) return;
  const markets = await r.json().catch(() => []);
  if (!Array.isArray(markets)) return;
  const sel = $("#market-switch");
  sel.replaceChildren(...markets.map((m) => h("option", {
    value: m.path, text: `${m.name ? m.name + " — " : ""}${m.market_id}${m.default ? " (default)" : ""}` +
      `${m.status === "suspended" ? " · suspended" : ""}`,
    ...(m.path === BASE ? { selected: "" } : {}),
  })));
  $("#market-switcher").hidden = markets.length < 2;
}
$("#market-switch").addEventListener("change", (ev) => { location.href = `${ev.currentTarget.value}operator`; });

// ------------------------------------------------------------------ communities (platform operator)
// Shown when this page's session was opened with the platform operator token on the
// deployment's root page (GET operator/session says "platform": true); it calls the platform
// routes (api/platform/markets...) with the page session like the operator actions.
const P = { markets: null, shown: "" };

async function loadPlatform() {
  const r = await fetch(`${BASE}operator/session`, { credentials: "same-origin" }).catch(() => null);
  if (!r || !r.ok) return;
  const info = await r.json().catch(() => null);
  if (!info || !info.platform) return;
  $("#platform-section").hidden = false;
  $("#platform-link").hidden = false;
  await refreshPlatform();
  setInterval(refreshPlatform, 5000);
}

async function refreshPlatform() {
  try {
    P.markets = await api("GET", "/api/platform/markets");
  } catch (e) {
    pstatus(`Could not load the communities: ${e.message}`, false);
    return;
  }
  const key = JSON.stringify(P.markets);
  if (key === P.shown) return; // unchanged: keep the table (and the keyboard focus in it)
  P.shown = key;
  renderPlatform();
}

function pstatus(text, ok) {
  const s = $("#platform-status");
  s.textContent = text;
  s.className = "action-status " + (ok ? "ok" : "bad");
}

const rules = (settings) => {
  const kv = Object.entries(settings || {});
  return kv.length ? kv.map(([k, v]) => `${k}=${v}`).join(", ") : "the deployment's";
};

function renderPlatform() {
  const tb = $("#platform-markets tbody");
  tb.replaceChildren(...P.markets.map((m) => {
    const label = `${m.market_id}${m.name ? ` (${m.name})` : ""}`;
    const button = (text, cls, onclick) => h("button", { type: "button", class: cls, "data-action": text.toLowerCase()
      .replace(/[^a-z ]/g, "").trim().replaceAll(" ", "-"), "aria-label": `${text.replace("…", "")} ${label}`, onclick },
      text);
    const actions = [];
    if (m.default) actions.push(h("span", { class: "muted", text: "the deployment's own market (this page)" }));
    else {
      if (m.status === "active") {
        actions.push(button("Suspend…", "danger", () => platformAct("Suspend a community",
          `Suspend community ${label}? Its market halts (no new orders; cancels still work) and new peer ` +
          "sessions are refused until it is resumed.", m, "suspend", (r) => `Community ${r.market_id} suspended.`)));
      } else {
        actions.push(button(m.status === "archived" ? "Start again…" : "Resume…", "", () => platformAct(
          m.status === "archived" ? "Start a community again" : "Resume a community",
          m.status === "archived" ? `Start archived community ${label} again? It is recovered from its journal and ` +
            `mounted at ${m.path}.` : `Resume trading on community ${label}?`, m, "resume",
          (r) => `Community ${r.market_id} is ${r.status} again.`)));
      }
      if (m.status !== "archived") {
        actions.push(button("Archive…", "danger", () => platformAct("Archive a community",
          `Archive community ${label}? It stops and ${m.path} answers 404; its journal, members and every ` +
          "record stay, and it can be started again.", m, "archive", (r) => `Community ${r.market_id} archived.`)));
      }
      actions.push(button("Change…", "secondary", () => openEdit(m)));
      actions.push(button("New token…", "secondary", () => platformAct("Rotate the community manager token",
        `Make a new community manager token for ${label}? The current one stops working at once (its page ` +
        "sessions stay until they log out).", m, "token", (r) => `New community manager token for ${r.market_id}.`)));
    }
    const running = m.running ? (m.halted ? "yes, halted" : "yes") : (m.error ? `no: ${m.error}` : "no");
    const path = m.status === "archived" ? h("span", { class: "mono", text: m.path })
      : h("a", { class: "mono", href: `${m.path}operator`, "data-open": m.market_id, text: m.path,
                 "aria-label": `open the operator page of ${label} (${m.path}operator)` });
    return h("tr", { "data-market-id": m.market_id, "data-status": m.status },
      h("th", { scope: "row", class: "mono", text: m.market_id }),
      h("td", { text: m.name || (m.default ? "(default)" : "") }),
      h("td", { class: `status status-${m.status}`, text: m.status }),
      h("td", {}, path),
      h("td", { class: "running", text: running }),
      h("td", { class: "small", text: m.default ? "" : rules(m.settings) }),
      h("td", {}, h("div", { class: "row-actions" }, ...actions)));
  }));
}

function showToken(res) {
  $("#platform-token-note").textContent = `Community ${res.market_id}${res.name ? ` (${res.name})` : ""}: give this ` +
    `token to its community manager. It opens ${res.path}operator and that community's operator API only; only its ` +
    "hash is kept, so it is not shown again (make a new one if it is lost).";
  const input = $("#platform-token-value");
  input.value = res.operator_token;
  $("#platform-token").hidden = false;
  input.focus();
  input.select();
}

async function platformAct(title, question, m, op, done) {
  if (!(await confirmDialog(title, question))) { pstatus("Cancelled: nothing was changed.", true); return; }
  try {
    const res = await api("POST", `/api/platform/markets/${encodeURIComponent(m.market_id)}/${op}`, {});
    pstatus(done(res), true);
    if (res.operator_token) showToken(res);
  } catch (e) {
    pstatus(`${title} failed: ${e.message}`, false);
  }
  await refreshPlatform();
  loadMarkets();
}

// Change a community (PATCH api/platform/markets/<id>): its name, and the settings its
// services read (the server refuses the rest of a started community's settings with
// SETTING_FIXED and names them; its message is shown as it is, with the request id).
const EDIT_FIELDS = [
  ["settlement_batch_size", "#edit-settlement-batch", "int"],
  ["settlement_max_age_s", "#edit-settlement-age", "number"],
  ["metering_default_tariff", "#edit-default-tariff", "text"],
  ["disclose_counterparty", "#edit-disclose", "bool"],
];
const FIXED_NOTE = "Fixed once the community has started (its journal is replayed under them): gate, mechanism, " +
  "calendar, price bounds and controls, quantities, self-trade prevention, risk checks, metering interval. " +
  "Create a new community for other trading rules.";
let editing = null; // the market being changed, as listed when the form opened

function openEdit(m) {
  editing = m;
  $("#edit-market-id").textContent = m.market_id;
  $("#edit-market-name").value = m.name || "";
  for (const [key, sel] of EDIT_FIELDS) {
    const v = (m.settings || {})[key];
    $(sel).value = v === undefined || v === null ? "" : String(v);
  }
  const own = Object.entries(m.settings || {}).filter(([k]) => !EDIT_FIELDS.some(([f]) => f === k));
  $("#edit-fixed").textContent = FIXED_NOTE + (own.length ? ` This community's own: ${rules(Object.fromEntries(own))}.`
    : "");
  $("#platform-edit-error").hidden = true;
  const form = $("#platform-edit");
  form.hidden = false;
  form.scrollIntoView({ block: "nearest" });
  $("#edit-market-name").focus();
}

// The fields as a PATCH body: only what differs from the market as listed; an emptied field
// sends null (back to the deployment's value). Values are sent as typed, the server checks them.
function editPatch() {
  const body = {};
  const name = $("#edit-market-name").value.trim();
  if (name !== (editing.name || "")) body.name = name;
  const settings = {};
  for (const [key, sel, kind] of EDIT_FIELDS) {
    const raw = $(sel).value.trim();
    const had = (editing.settings || {})[key];
    if (raw === "") {
      if (had !== undefined) settings[key] = null;
      continue;
    }
    let v = raw;
    if (kind === "int" && /^[0-9]+$/.test(raw)) v = Number(raw);
    else if (kind === "number" && /^[0-9]+(\.[0-9]+)?$/.test(raw)) v = Number(raw);
    else if (kind === "bool") v = raw === "true";
    if (v !== had) settings[key] = v;
  }
  if (Object.keys(settings).length) body.settings = settings;
  return body;
}

async function submitEdit(ev) {
  ev.preventDefault();
  const err = $("#platform-edit-error");
  err.hidden = true;
  const m = editing;
  const body = editPatch();
  if (!Object.keys(body).length) { pstatus(`Community ${m.market_id}: nothing to change.`, true); return; }
  if (body.settings && m.running && !(await confirmDialog("Change a community's settings",
    `Apply ${Object.keys(body.settings).join(", ")} to community ${m.market_id}? Its market restarts to apply them: ` +
    "its state is recovered from its journal and its peers reconnect."))) {
    pstatus("Cancelled: nothing was changed.", true);
    return;
  }
  const btn = $("#platform-edit-btn");
  btn.disabled = true;
  try {
    const res = await api("PATCH", `/api/platform/markets/${encodeURIComponent(m.market_id)}`, body);
    const what = res.changed.length ? `settings changed: ${res.changed.join(", ")}` : "no setting changed";
    pstatus(`Community ${res.market_id} updated (${what}${res.restarted ? "; its market restarted" : ""}).`, true);
    $("#platform-edit").hidden = true;
    editing = null;
  } catch (e) {
    err.textContent = `Community ${m.market_id} was not changed: ${e.message}`;
    err.hidden = false;
  } finally {
    btn.disabled = false;
  }
  await refreshPlatform();
  loadMarkets();
}

function wirePlatform() {
  $("#platform-edit").addEventListener("submit", submitEdit);
  $("#platform-edit-cancel").addEventListener("click", () => {
    $("#platform-edit").hidden = true;
    editing = null;
  });
  $("#platform-token-done").addEventListener("click", () => {
    $("#platform-token-value").value = "";
    $("#platform-token").hidden = true;
  });
  $("#platform-create").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = $("#platform-create-error");
    err.hidden = true;
    const market_id = $("#new-market-id").value.trim(), name = $("#new-market-name").value.trim();
    const settings = {};
    for (const [key, el] of [["gate", "#new-market-gate"], ["mechanism", "#new-market-mechanism"],
                             ["timezone", "#new-market-timezone"]]) {
      const v = $(el).value.trim();
      if (v) settings[key] = v;
    }
    if ($("#new-market-minutes").value) settings.product_minutes = Number($("#new-market-minutes").value);
    const btn = $("#platform-create-btn");
    btn.disabled = true;
    try {
      // the server validates everything (id, name, the settings as a whole) and says what is wrong
      const res = await api("POST", "/api/platform/markets", { market_id, name, settings });
      pstatus(`Community ${res.market_id} created and running at ${res.path}.`, true);
      ev.target.reset();
      showToken(res);
    } catch (e) {
      err.textContent = `The community was not created: ${e.message}`;
      err.hidden = false;
      pstatus("", true);
    } finally {
      btn.disabled = false;
    }
    await refreshPlatform();
    loadMarkets();
  });
}

wirePlatform();
connect();
loadMarkets();
loadPlatform();
