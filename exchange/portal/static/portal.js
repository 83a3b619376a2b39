// The member portal: sign-in with the wallet (EIP-4361), then the member's own market, energy,
// bills, flexibility and proofs over the peer WebSocket that the portal session logs in.
import * as fmt from "./format.js";
import { depthChart, barChart } from "./charts.js";
import { siweMessage, messageHex, checksumAddress } from "./siwe.js";
import * as wallet from "./wallet.js";
import { Peer } from "./peer.js";
import { verifyProof } from "./proof.js";
import { initAgent } from "./agent.js";
import { initCollateral } from "./collateral.js";

const $ = (sel) => document.querySelector(sel);
const S = {
  session: null, peer: null, hello: null, tz: "Europe/Amsterdam", products: [], product: null,
  book: null, last: [], orders: [], trades: [], nonce: 0, bills: [], agent: null,
};
let agentView = null;
let collateralView = null;
window.portal = S; // for the curious (and the tests): state only, no secrets (the cookie is HttpOnly)

// --------------------------------------------------------------------------- small DOM helpers

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "–";
  if (cls) td.className = cls;
  return td;
}

function row(cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const c of cells) tr.append(c instanceof Node ? c : cell(c));
  return tr;
}

function fill(table, rows, emptyText) {
  const tb = $(table).tBodies[0];
  if (!rows.length) {
    const td = cell(emptyText, "empty");
    td.colSpan = $(table).tHead.rows[0].cells.length;
    tb.replaceChildren(row([td]));
  } else tb.replaceChildren(...rows);
}

function button(text, label, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function say(sel, text, kind = "") {
  const e = $(sel);
  e.textContent = text;
  e.className = "status" + (kind ? " " + kind : "");
}

function toast(text) {
  say("#notice", text);
  $("#notice").classList.add("toast");
}

const num = (text, cls = "num") => cell(text, cls);

// --------------------------------------------------------------------------- HTTP

// This market's base path ("" or "/m/<id>"), filled in by the server: the API and the
// WebSocket of a hosted community are under it.
export const BASE = document.querySelector('meta[name="voltbourse-base"]')?.content || "";

async function api(path, opts = {}) {
  path = BASE + path;
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  if (opts.csrf && S.session) headers["X-CSRF-Token"] = S.session.csrf_token;
  const r = await fetch(path, { method: opts.method || "GET", headers, credentials: "same-origin",
                                body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  return { status: r.status, ok: r.ok, body };
}

// --------------------------------------------------------------------------- sign-in

// The server's refusal -> the sentence the member reads (the code, then its message).
function refusal(status, body) {
  const code = body?.error || body?.code || `HTTP ${status}`;
  const msg = body?.message || "";
  const hints = [
    [/DOMAIN/i, "The message was for another site (domain) than this one: sign in again from this page."],
    [/EXPIRED/i, "The sign-in message expired before it reached the server: sign in again."],
    [/NONCE|REPLAY/i, "This sign-in message was already used (or its nonce is unknown): sign in again."],
    [/CHAIN/i, "The message names another network (chain id) than the exchange's."],
    [/URI/i, "The message names another address (URI) than this portal's."],
    [/SIGNATURE/i, "The signature does not match the address in the message."],
    [/UNKNOWN_MEMBER|NOT_A_MEMBER/i, "This wallet address is not a member of the community."],
    [/SUSPENDED/i, "This member is suspended: contact the community manager."],
  ];
  const hint = hints.find(([re]) => re.test(code) || re.test(msg));
  return `${hint ? hint[1] + " " : ""}(${code}${msg ? ": " + msg : ""})`;
}

function showSignin(message) {
  $("#app").hidden = true;
  $("#who").hidden = true;
  $("#conn").hidden = true;
  $("#signout-box").hidden = true;
  $("#signin-section").hidden = false;
  $("#no-wallet").hidden = !!wallet.provider();
  $("#signin-btn").disabled = !wallet.provider();
  const err = $("#signin-error");
  err.hidden = !message;
  err.textContent = message || "";
}

async function signIn() {
  const err = $("#signin-error");
  err.hidden = true;
  $("#signin-btn").disabled = true;
  try {
    say("#signin-status", "Asking your wallet for your account…");
    const address = checksumAddress(await wallet.account());
    const n = await api("/portal/siwe/nonce");
    if (!n.ok) throw new Error(`The server gave no sign-in nonce ${refusal(n.status, n.body)}`);
    const message = siweMessage(n.body, address);
    $("#siwe-preview").textContent = message;
    say("#signin-status", "Confirm the sign-in message in your wallet…");
    const signature = await wallet.personalSign(messageHex(message), address);
    say("#signin-status", "Checking the signature…");
    const r = await api("/portal/siwe/login", { method: "POST", body: { message, signature } });
    if (!r.ok) throw new Error(`Sign-in refused. ${refusal(r.status, r.body)}`);
    say("#signin-status", "");
    await start(r.body);
  } catch (e) {
    say("#signin-status", "");
    err.textContent = e.message;
    err.hidden = false;
    $("#signin-btn").disabled = !wallet.provider();
  }
}

async function signOut(all) {
  const r = await api(all ? "/portal/logout-all" : "/portal/logout", { method: "POST", csrf: true, body: {} });
  if (S.peer) S.peer.close();
  S.peer = null;
  S.session = null;
  S.agent = null;
  showSignin(r.ok ? (all ? "Signed out on every device." : "Signed out.") : `Sign-out failed ${refusal(r.status, r.body)}`);
  if (r.ok) $("#signin-error").classList.add("info"); else $("#signin-error").classList.remove("info");
}

// --------------------------------------------------------------------------- session start

async function start(session) {
  S.session = session;
  $("#signin-section").hidden = true;
  $("#signin-error").classList.remove("info");
  $("#app").hidden = false;
  $("#who").hidden = false;
  $("#signout-box").hidden = false;
  $("#conn").hidden = false;
  $("#member").textContent = session.member;
  $("#member").title = session.member;
  S.peer = new Peer(onPush, onConn);
  try {
    S.hello = await S.peer.connect();
  } catch (e) {
    onConn("bad");
    toast(e.message);
    return;
  }
  $("#market-id").textContent = S.hello.market_id;
  try {
    const m = await api("/api/metering");
    if (m.ok && m.body?.timezone) S.tz = m.body.timezone;
  } catch { /* metering off: default zone */ }
  await loadProducts();
  await Promise.all([refreshMine(), initEnergy(), loadBills(), loadFlex(), agentView.start(), collateralView.start()]);
}

function onConn(state) {
  const c = $("#conn");
  if (state === "ok" || state === "reconnected") {
    c.textContent = "live";
    c.className = "conn ok";
    if (state === "reconnected") {
      subscribeBook();
      refreshMine();
    }
  } else {
    c.textContent = "disconnected, retrying…";
    c.className = "conn bad";
  }
}

let refreshTimer = null;
function soon(fn, ms = 150) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(fn, ms);
}

function onPush(m) {
  switch (m.type) {
    case "book_snapshot":
      if (m.product_id === S.product) { S.book = m; renderBook(); }
      break;
    case "trade":
      if (m.product_id === S.product) { S.last.unshift(m); S.last = S.last.slice(0, 20); renderLast(); }
      break;
    case "product_state": {
      const p = S.products.find((x) => x.product_id === m.product_id);
      if (p) { p.state = m.state; renderProductOptions(); }
      break;
    }
    case "execution":
      soon(refreshMine);
      if (agentView) agentView.refresh();
      if (collateralView) collateralView.refresh();
      if (m.exec === "fill") toast(`Your order ${m.order_id} traded ${fmt.kwh(m.quantity)} kWh at ${fmt.price(m.price)} EUR/MWh.`);
      break;
    case "flex_invitation":
      toast(`New flexibility invitation ${m.invitation_id} (event ${m.event_id}).`);
      loadFlex();
      break;
    case "flex_event": case "flex_dispatch": case "flex_delivery": case "flex_payout":
      loadFlex();
      break;
    case "error":
      if (m.code === "MEMBER_SUSPENDED") toast("This member was suspended by the operator.");
      break;
    default:
      break;
  }
}

// --------------------------------------------------------------------------- market

async function loadProducts() {
  const r = await api("/api/products");
  S.products = r.ok ? r.body : [];
  try { await S.peer.request({ type: "subscribe", channel: "products" }); } catch { /* shown by conn */ }
  renderProductOptions();
  const open = S.products.filter((p) => p.state === "open");
  await selectProduct((open[0] || S.products[0] || {}).product_id || null);
}

function renderProductOptions() {
  const tradable = S.products.filter((p) => ["open", "auction"].includes(p.state));
  const opts = (list, current) => list.map((p) => {
    const o = document.createElement("option");
    o.value = p.product_id;
    o.textContent = `${fmt.productLabel(p, S.tz)} (${p.state})`;
    o.selected = p.product_id === current;
    return o;
  });
  const viewable = S.products.filter((p) => p.state !== "delivered");
  const sel = $("#product");
  const cur = S.product || sel.value;
  sel.replaceChildren(...opts(viewable.length ? viewable : S.products, cur));
  const of = $("#of-product");
  const ofCur = of.value || S.product;  // the form keeps what the member chose
  of.replaceChildren(...opts(tradable, ofCur));
  if (!tradable.length) {
    const o = document.createElement("option");
    o.value = "";
    o.textContent = "no product is open for trading";
    of.replaceChildren(o);
  }
  const p = S.products.find((x) => x.product_id === S.product);
  $("#product-state").textContent = p ? `State: ${p.state}; gate ${fmt.dateTime(p.gate, S.tz)}` : "";
}

async function selectProduct(pid) {
  const old = S.product;
  S.product = pid;
  S.book = null;
  S.last = [];
  if (old && old !== pid) {
    try {
      await S.peer.request({ type: "unsubscribe", channel: "book", product_id: old });
      await S.peer.request({ type: "unsubscribe", channel: "trades", product_id: old });
    } catch { /* gone already */ }
  }
  renderProductOptions();
  if ($("#of-product").querySelector(`option[value="${CSS.escape(pid || "")}"]`)) $("#of-product").value = pid;
  renderBook();
  if (!pid) return;
  await subscribeBook();
  await loadLast();
}

async function subscribeBook() {
  if (!S.product) return;
  try {
    await S.peer.request({ type: "subscribe", channel: "book", product_id: S.product, depth: 20 });
    await S.peer.request({ type: "subscribe", channel: "trades", product_id: S.product });
  } catch (e) {
    // no socket: the public REST book instead
    const r = await api(`/api/products/${encodeURIComponent(S.product)}/book?depth=20`);
    if (r.ok) {
      S.book = { bids: r.body.bids.map((l) => [l.price, l.volume, l.orders]),
                 asks: r.body.asks.map((l) => [l.price, l.volume, l.orders]) };
      renderBook();
    }
  }
}

async function loadLast() {
  // the public trades, newest last; keep this product's
  const out = [];
  let after = 0;
  for (let page = 0; page < 20; page++) {
    const r = await api(`/api/trades?after=${after}&limit=1000`);
    if (!r.ok || !Array.isArray(r.body) || !r.body.length) break;
    for (const t of r.body) {
      if (t.product_id === S.product) out.push({ trade_id: t.trade_id, ts: t.ts, price: t.price_ticks, quantity: t.energy_wh });
    }
    after = r.body[r.body.length - 1].seq;
    if (r.body.length < 1000) break;
  }
  const seen = new Set(S.last.map((t) => t.trade_id));
  S.last = [...S.last, ...out.reverse().filter((t) => !seen.has(t.trade_id))].slice(0, 20);
  renderLast();
}

function renderBook() {
  const b = S.book || { bids: [], asks: [] };
  depthChart($("#depth"), b, fmt);
  const n = Math.max(b.bids.length, b.asks.length);
  const rows = [];
  // asks from the highest down to the best, then bids from the best down (a ladder)
  for (let i = b.asks.length - 1; i >= 0; i--) {
    rows.push(row([num(""), num(fmt.price(b.asks[i][0]), "num ask"), num(fmt.kwh(b.asks[i][1]))],
                  { "data-side": "sell", "data-price": String(b.asks[i][0]) }));
  }
  for (const [p, v] of b.bids) {
    rows.push(row([num(fmt.kwh(v)), num(fmt.price(p), "num bid"), num("")],
                  { "data-side": "buy", "data-price": String(p) }));
  }
  fill("#book", n ? rows : [], S.product ? "The book is empty." : "No product selected.");
}

function renderLast() {
  fill("#last-prices", S.last.map((t) => row([fmt.hm(t.ts, S.tz), num(fmt.price(t.price)), num(fmt.kwh(t.quantity))])),
       "No trades in this product yet.");
}

async function refreshMine() {
  if (!S.peer) return;
  try {
    const [o, pos] = await Promise.all([S.peer.request({ type: "orders" }), S.peer.request({ type: "positions" })]);
    S.orders = o.orders;
    renderOrders();
    renderPositions(pos.positions);
    await loadTrades();
  } catch (e) {
    say("#orders-status", `Could not read your orders: ${e.message}`, "bad");
  }
}

const productName = (pid) => fmt.productLabel(S.products.find((p) => p.product_id === pid) || pid, S.tz);

function renderOrders() {
  const byAgent = new Set((S.agent?.orders || []).map((a) => a.order_id));
  fill("#orders", S.orders.map((o) => row([
    cell(byAgent.has(o.order_id) ? `${o.order_id} (agent)` : String(o.order_id)), cell(productName(o.product_id)), cell(o.side),
    num(fmt.price(o.price)), num(fmt.kwh(o.remaining)), num(fmt.kwh(o.quantity)),
    (() => {
      const td = document.createElement("td");
      td.className = "actions";
      td.append(button("Modify", `Modify order ${o.order_id}`, () => openModify(o), "small"),
                button("Cancel", `Cancel order ${o.order_id}`, () => cancelOrder(o), "small danger"));
      return td;
    })(),
  ], { "data-order-id": String(o.order_id) })), "You have no open orders.");
}

function renderPositions(list) {
  fill("#positions", list.filter((p) => p.bought || p.sold).map((p) => row([
    cell(productName(p.product_id)), num(fmt.kwh(p.bought)), num(fmt.kwh(p.sold)), num(fmt.kwh(p.net)),
    num(fmt.eur(p.payable)), cell(p.state),
  ])), "No positions yet.");
}

async function loadTrades() {
  const all = [];
  let after = 0;
  for (let page = 0; page < 10; page++) {
    const r = await S.peer.request({ type: "trades", after, limit: 500 });
    all.push(...r.trades);
    if (r.trades.length < 500) break;
    after = r.trades[r.trades.length - 1].seq;
  }
  S.trades = all.reverse();
  fill("#my-trades", S.trades.map((t) => row([
    cell(String(t.trade_id)), cell(fmt.shortTime(t.ts, S.tz)), cell(productName(t.product_id)), cell(t.side),
    num(fmt.price(t.price)), num(fmt.kwh(t.quantity)),
    cell(t.counterparty ? fmt.shortAddr(t.counterparty) : "not disclosed"),
    (() => {
      const td = document.createElement("td");
      td.append(button("Verify", `Verify the proof of trade ${t.trade_id}`, () => {
        $("#proof-trade").value = String(t.trade_id);
        $("#proof-section").scrollIntoView();
        runProof(t.trade_id);
      }, "small"));
      return td;
    })(),
  ], { "data-trade-id": String(t.trade_id) })), "No trades yet.");
}

function nextNonce() {
  // above every nonce this member used before: milliseconds x 1000 plus a counter (< 2^53)
  const base = Date.now() * 1000;
  S.nonce = Math.max(S.nonce + 1, base);
  return S.nonce;
}

async function placeOrder(ev) {
  ev.preventDefault();
  const pid = $("#of-product").value;
  const side = document.querySelector('input[name="side"]:checked').value;
  const price = fmt.parsePrice($("#of-price").value);
  const qty = fmt.parseKwh($("#of-qty").value);
  const invalid = [];
  $("#of-price").setAttribute("aria-invalid", price.error ? "true" : "false");
  $("#of-qty").setAttribute("aria-invalid", qty.error || qty.value === 0n ? "true" : "false");
  if (!pid) invalid.push("Choose an open product.");
  if (price.error) invalid.push(price.error + ".");
  if (qty.error) invalid.push(qty.error + ".");
  else if (qty.value <= 0n) invalid.push("Quantity must be above zero.");
  if (invalid.length) return say("#of-status", invalid.join(" "), "bad");
  const nonce = nextNonce();
  const order = { product_id: pid, side, price: fmt.wireInt(price.value), quantity: fmt.wireInt(qty.value), tif: "gtc",
                  client_order_id: `portal-${nonce}` };
  const typed = {
    types: {
      EIP712Domain: [{ name: "name", type: "string" }, { name: "version", type: "string" },
                     { name: "chainId", type: "uint256" }],
      Order: [{ name: "market", type: "string" }, { name: "product", type: "string" }, { name: "side", type: "string" },
              { name: "price", type: "int256" }, { name: "quantity", type: "uint256" }, { name: "tif", type: "string" },
              { name: "clientOrderId", type: "string" }, { name: "nonce", type: "uint256" }],
    },
    primaryType: "Order",
    domain: S.hello.eip712_domain,
    message: { market: S.hello.market_id, product: pid, side, price: order.price, quantity: order.quantity,
               tif: "gtc", clientOrderId: order.client_order_id, nonce },
  };
  $("#of-submit").disabled = true;
  try {
    say("#of-status", "Confirm the order in your wallet…");
    const signature = await wallet.signTypedData(S.session.member, typed);
    say("#of-status", "Sending…");
    const r = await S.peer.request({ type: "place", ...order, signature, nonce });
    const filled = r.filled ? `, ${fmt.kwh(r.filled)} kWh traded at once` : "";
    say("#of-status", `Order ${r.order_id} ${r.status}${filled}.`, "good");
    refreshMine();
  } catch (e) {
    say("#of-status", `Not placed: ${e.code ? e.code + ": " : ""}${e.message}`, "bad");
  } finally {
    $("#of-submit").disabled = false;
  }
}

async function cancelOrder(o) {
  try {
    await S.peer.request({ type: "cancel", order_id: o.order_id });
    say("#orders-status", `Order ${o.order_id} cancelled.`, "good");
  } catch (e) {
    say("#orders-status", `Order ${o.order_id} not cancelled: ${e.code}: ${e.message}`, "bad");
  }
  refreshMine();
}

let modifying = null;
function openModify(o) {
  modifying = o;
  $("#mod-order").textContent = String(o.order_id);
  $("#mod-price").value = fmt.price(o.price).replace(/,/g, "").replace("−", "-");
  $("#mod-qty").value = fmt.kwh(o.remaining).replace(/,/g, "");
  $("#modify-form").hidden = false;
  $("#mod-price").focus();
}

async function modifyOrder(ev) {
  ev.preventDefault();
  const o = modifying;
  if (!o) return;
  const price = fmt.parsePrice($("#mod-price").value), qty = fmt.parseKwh($("#mod-qty").value);
  if (price.error || qty.error) return say("#orders-status", [price.error, qty.error].filter(Boolean).join(". "), "bad");
  const msg = { type: "modify", order_id: o.order_id };
  if (price.value !== BigInt(o.price)) msg.price = fmt.wireInt(price.value);
  if (qty.value !== BigInt(o.remaining)) msg.quantity = fmt.wireInt(qty.value);
  if (msg.price === undefined && msg.quantity === undefined) return say("#orders-status", "Nothing to change.", "bad");
  try {
    const r = await S.peer.request(msg);
    say("#orders-status", `Order ${o.order_id} modified: ${fmt.kwh(r.remaining)} kWh at ${fmt.price(r.price)} EUR/MWh` +
        `${r.priority_kept ? " (time priority kept)" : ""}.`, "good");
    $("#modify-form").hidden = true;
  } catch (e) {
    say("#orders-status", `Order ${o.order_id} not modified: ${e.code}: ${e.message}`, "bad");
  }
  refreshMine();
}

// --------------------------------------------------------------------------- energy and bills

// The UTC instant of local midnight of `ymd` ("2026-11-20") in the time zone `tz`.
function localMidnight(ymd, tz) {
  const [y, m, d] = ymd.split("-").map(Number);
  const guess = Date.UTC(y, m - 1, d);
  const offset = (t) => {
    const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" })
      .formatToParts(new Date(t)).map((p) => [p.type, p.value]));
    return Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second) - t;
  };
  let t = guess - offset(guess);
  t = guess - offset(t);
  return new Date(t);
}

function localYmd(date, tz) {
  const p = Object.fromEntries(new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit",
    day: "2-digit" }).formatToParts(date).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day}`;
}

const isoZ = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");

async function initEnergy() {
  // the last 7 days by default, unless the member already chose a period while the page was
  // still signing in (their choice is not overwritten)
  if (!$("#en-start").value || !$("#en-end").value) {
    const now = new Date(S.hello.market_time || Date.now());
    $("#en-start").value = localYmd(new Date(now.getTime() - 6 * 86400000), S.tz);
    $("#en-end").value = localYmd(now, S.tz);
  }
  await loadEnergy();
}

async function loadEnergy(ev) {
  if (ev) ev.preventDefault();
  const a = $("#en-start").value, b = $("#en-end").value, by = $("#en-by").value;
  if (!a || !b || b < a) return say("#energy-status", "Choose a start day on or before the end day.", "bad");
  const start = localMidnight(a, S.tz);
  const endDay = new Date(Date.parse(b + "T12:00:00Z") + 86400000).toISOString().slice(0, 10);
  const end = localMidnight(endDay, S.tz);
  if (end - start > 31 * 86400000) return say("#energy-status", "At most 31 days at a time.", "bad");
  say("#energy-status", "Loading…");
  // only the latest request draws: the first load (the last 7 days, at sign-in) may answer
  // after a period the member asked for since
  const mine = (S.energySeq = (S.energySeq || 0) + 1);
  let r;
  try {
    r = await S.peer.request({ type: "my_energy", start: isoZ(start), end: isoZ(end), by });
  } catch (e) {
    if (mine !== S.energySeq) return;
    const why = { NO_TARIFF: "The community has not set up your tariff yet, so there is nothing to show. ",
                  INVALID_PERIOD: "Choose another period. " }[e.code] || "";
    say("#energy-status", `No energy data. ${why}(${e.code}: ${e.message})`, "bad");
    return;
  }
  if (mine !== S.energySeq) return;
  say("#energy-status", "");
  const label = (iso) => (by === "day" ? fmt.day(iso, S.tz) : `${fmt.day(iso, S.tz)} ${fmt.hm(iso, S.tz)}`);
  const rows = r.rows;
  barChart($("#energy-chart"), rows.map((x) => label(x.start)), [
    { name: "consumption", values: rows.map((x) => x.consumption_wh) },
    { name: "generation", values: rows.map((x) => x.generation_wh) },
    { name: "import", values: rows.map((x) => x.import_wh) },
    { name: "export", values: rows.map((x) => x.export_wh) },
  ], "Energy per " + by, fmt);
  fill("#energy-table", rows.map((x) => row([
    cell(label(x.start)), num(fmt.kwh(x.consumption_wh)), num(fmt.kwh(x.generation_wh)), num(fmt.kwh(x.import_wh)),
    num(fmt.kwh(x.export_wh)), cell(x.estimated ? `yes (${x.estimated} intervals estimated)` : "no", x.estimated ? "flag" : ""),
  ])), "No metered energy in this period.");
  renderKpis(r);
}

function kpi(label, value, id) {
  const d = document.createElement("div");
  d.className = "kpi";
  d.setAttribute("role", "listitem");
  if (id) d.id = id;
  const v = document.createElement("span");
  v.className = "kpi-value";
  v.textContent = value;
  const l = document.createElement("span");
  l.className = "kpi-label";
  l.textContent = label;
  d.append(v, l);
  return d;
}

function renderKpis(r) {
  const k = r.kpi || {};
  const f = r.flows || {};
  const items = [
    kpi("consumed, kWh", fmt.kwh(k.consumption_wh ?? 0)),
    kpi("generated, kWh", fmt.kwh(k.generation_wh ?? 0)),
    kpi("self-sufficiency", fmt.percent(k.self_sufficiency), "kpi-self"),
    kpi("from peers (share of consumption)", fmt.percent(k.p2p_share)),
    kpi("bought from peers, kWh", fmt.kwh(f.from_peers_wh ?? k.p2p_bought_wh ?? 0)),
  ];
  if (S.savings !== undefined) items.push(kpi(`saved vs grid-only, EUR (bill ${S.savings.period})`, fmt.eur(S.savings.units), "kpi-savings"));
  $("#energy-kpis").replaceChildren(...items);
  S.lastEnergy = r;
}

async function loadBills() {
  let r;
  try {
    r = await S.peer.request({ type: "my_bills" });
  } catch (e) {
    fill("#bills", [], e.code === "UNKNOWN_TYPE" ? "Billing is not enabled on this exchange." : `No bills: ${e.message}`);
    return;
  }
  S.bills = r.bills;
  fill("#bills", r.bills.map((b) => row([
    cell(`${fmt.date(b.start, S.tz)} – ${fmt.date(new Date(Date.parse(b.end) - 1).toISOString(), S.tz)}`),
    cell(String(b.version)), num(fmt.eur(b.total)),
    (() => {
      const td = document.createElement("td");
      td.append(button("Open", `Open the bill of ${fmt.date(b.start, S.tz)}`, () => openBill(b), "small"));
      return td;
    })(),
  ], { "data-bill-start": b.start })), "No bill issued yet.");
}

async function openBill(b) {
  const mine = (S.billSeq = (S.billSeq || 0) + 1);  // the bill opened last is the one shown
  let bill;
  try {
    bill = await S.peer.request({ type: "my_bill", start: b.start, end: b.end });
  } catch (e) {
    if (mine === S.billSeq) toast(`Bill not available: ${e.code}: ${e.message}`);
    return;
  }
  if (mine !== S.billSeq) return;
  S.bill = bill;
  const period = `${fmt.date(bill.start, S.tz)} – ${fmt.date(new Date(Date.parse(bill.end) - 1).toISOString(), S.tz)}`;
  $("#bill-period").textContent = period;
  $("#bill-meta").textContent = `Member ${bill.member}; tariff ${bill.tariff ?? "–"}; version ${bill.version}` +
    (bill.estimated_intervals ? `; ${bill.estimated_intervals} intervals estimated` : "");
  fill("#bill-lines", bill.lines.map((l) => row([
    cell(l.detail ? `${l.name} (${l.detail})` : l.name), cell(l.payee),
    num(l.energy_wh === null || l.energy_wh === undefined ? "" : fmt.kwh(l.energy_wh)),
    num(l.rate_ticks === null || l.rate_ticks === undefined ? "" : `${fmt.price(l.rate_ticks)} EUR/MWh`),
    num(fmt.eur(l.amount)),
  ])), "No lines.");
  $("#bill-total").textContent = fmt.eur(bill.total_units);
  const dl = $("#bill-summary");
  dl.replaceChildren();
  for (const [k, v] of [["Grid-only cost (no community)", fmt.eur(bill.grid_only_units) + " EUR"],
                        ["Saved thanks to the community", fmt.eur(bill.savings_units) + " EUR"],
                        ["Exact total (1e-8 EUR)", bill.total_units.units]]) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  $("#bill").hidden = false;
  S.savings = { units: bill.savings_units, period };
  if (S.lastEnergy) renderKpis(S.lastEnergy);
}

// --------------------------------------------------------------------------- flexibility

async function loadFlex() {
  let r;
  try {
    r = await S.peer.request({ type: "flex_status" });
  } catch (e) {
    say("#flex-status", e.code === "UNKNOWN_TYPE" ? "Flexibility is not enabled on this exchange."
                                                   : `Flexibility unavailable: ${e.message}`);
    $("#flex-status").dataset.unavailable = "1";
    return;
  }
  if ($("#flex-status").dataset.unavailable) { say("#flex-status", ""); delete $("#flex-status").dataset.unavailable; }
  const offers = new Map(r.offers.map((o) => [o.offer_id, o]));
  const period = (a, b) => `${fmt.day(a, S.tz)} ${fmt.hm(a, S.tz)}–${fmt.hm(b, S.tz)}`;
  fill("#invitations", r.invitations.map((i) => {
    const o = offers.get(i.offer_id);
    const td = document.createElement("td");
    td.className = "actions";
    if (i.status === "invited") {
      td.append(button("Accept", `Accept invitation ${i.invitation_id}`, () => respond(i, true), "small"),
                button("Decline", `Decline invitation ${i.invitation_id}`, () => respond(i, false), "small ghost-dark"));
    } else td.textContent = "—";
    return row([cell(String(i.invitation_id)), cell(String(i.event_id)),
                cell(o ? `${o.direction} ${fmt.kwh(o.power_w)} kW, ${period(o.period_start, o.period_end)}` : String(i.offer_id)),
                cell(fmt.dateTime(i.respond_by, S.tz)), cell(i.reserve ? `${i.status} (reserve)` : i.status, `st-${i.status}`), td],
               { "data-invitation-id": String(i.invitation_id) });
  }), "No invitations.");
  fill("#offers", r.offers.map((o) => row([cell(String(o.offer_id)), cell(period(o.period_start, o.period_end)),
    cell(o.direction), num(fmt.kwh(o.power_w)), num(fmt.price(o.price)), cell(o.status)])), "No offers.");
  fill("#activations", r.activations.map((a) => row([cell(String(a.event_id)), cell(period(a.start, a.end)),
    num(fmt.kwh(a.power_w)), num(fmt.kwh(a.energy_wh)), cell(a.reserve ? "yes" : "no")])), "No dispatch instructions.");
  fill("#delivery", r.delivery.map((d) => row([cell(period(d.interval_start, d.interval_end)),
    num(fmt.kwh(d.baseline_wh)), num(fmt.kwh(d.metered_wh)), num(fmt.kwh(d.required_wh)), num(fmt.kwh(d.delivered_wh)),
    num(fmt.kwh(d.shortfall_wh))])), "No delivery measured yet.");
  fill("#shares", r.shares.map((s) => row([cell(String(s.event_id)), num(fmt.kwh(s.delivered_wh)),
    num(fmt.eur(s.share_units)), num(fmt.eur(s.penalty_units)), num(fmt.eur(s.payout_units))])), "No payouts yet.");
}

async function respond(inv, accept) {
  try {
    const r = await S.peer.request({ type: "flex_respond", invitation_id: inv.invitation_id, accept });
    say("#flex-status", `Invitation ${inv.invitation_id}: ${r.status}.`, "good");
  } catch (e) {
    say("#flex-status", `Invitation ${inv.invitation_id} not answered: ${e.code}: ${e.message}`, "bad");
  }
  loadFlex();
}

// --------------------------------------------------------------------------- proofs

async function runProof(tradeId) {
  const out = $("#proof-result");
  out.hidden = false;
  out.className = "card";
  out.textContent = `Fetching the proof of trade ${tradeId}…`;
  let p;
  try {
    p = await S.peer.request({ type: "trade_proof", trade_id: tradeId });
  } catch (e) {
    const why = { NOT_ANCHORED: "Its batch is not anchored on chain yet: try again in a minute.",
                  NOT_FOUND: "No trade of yours has this id.",
                  UNAVAILABLE: "This exchange runs without on-chain settlement." }[e.code] || "";
    out.textContent = `No proof for trade ${tradeId}. ${why} (${e.code}: ${e.message})`;
    return;
  }
  let v;
  try {
    v = verifyProof(p);
  } catch (e) {
    v = { ok: false, error: e.message, steps: [], root: "–", chainRoot: p.root, leaf: "–" };
  }
  const h = document.createElement("p");
  h.id = "proof-verdict";
  h.className = v.ok ? "verdict good" : "verdict bad";
  h.textContent = v.ok ? `✓ Trade ${p.trade_id} is in batch ${p.batch_id} anchored on chain`
                       : `✗ Trade ${p.trade_id}: the proof does NOT lead to the root on chain${v.error ? " (" + v.error + ")" : ""}`;
  h.dataset.ok = String(v.ok);
  const dl = document.createElement("dl");
  dl.className = "summary proof";
  const t = p.trade;
  const items = [
    ["Product", `${t.product_id}`], ["Buyer", t.buyer], ["Seller", t.seller],
    ["Energy", `${fmt.kwh(t.energy_wh)} kWh`], ["Price", `${fmt.price(t.price_ticks)} EUR/MWh`],
    ["Leaf (computed here)", v.leaf + (v.leafMatches === false ? " — differs from the server's" : "")],
    ["Proof", `${p.proof.length} sibling hashes, folded with keccak-256`],
    ["Root (computed here)", v.root], ["Root on chain (as the exchange reports it)", v.chainRoot],
    ["Chain", `chain id ${p.chain_id}, registry ${p.registry}, block ${p.block ?? "–"}`],
    ["Anchoring transaction", p.tx_hash || "–"],
  ];
  for (const [k, val] of items) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = val; dd.className = "mono";
    dl.append(dt, dd);
  }
  out.className = "card " + (v.ok ? "ok" : "ko");
  out.replaceChildren(h, dl);
}

// --------------------------------------------------------------------------- wiring

async function boot() {
  agentView = initAgent({
    S, api, wallet, productName, dom: { cell, row, fill, button },
    onStatus: (st) => {  // mark the agent's orders in "My open orders" when they change
      const key = (st.orders || []).map((o) => o.order_id).join(",");
      if (key !== S.agentOrdersKey) { S.agentOrdersKey = key; if (S.orders.length) renderOrders(); }
    },
    onChange: () => refreshMine(),
  });
  collateralView = initCollateral({ S, fmt, dom: { cell, row, fill } });
  $("#signin-btn").addEventListener("click", signIn);
  $("#signout").addEventListener("click", () => signOut(false));
  $("#signout-all").addEventListener("click", () => signOut(true));
  $("#product").addEventListener("change", (e) => selectProduct(e.target.value));
  $("#order-form").addEventListener("submit", placeOrder);
  $("#modify-form").addEventListener("submit", modifyOrder);
  $("#mod-cancel").addEventListener("click", () => { $("#modify-form").hidden = true; });
  $("#energy-form").addEventListener("submit", loadEnergy);
  $("#bill-print").addEventListener("click", () => {
    document.body.classList.add("printing-bill");
    window.print();
  });
  window.addEventListener("afterprint", () => document.body.classList.remove("printing-bill"));
  $("#proof-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("#proof-trade").value.trim();
    if (!/^\d{1,15}$/.test(id)) {
      $("#proof-result").hidden = false;
      $("#proof-result").textContent = "Enter a trade id (a whole number).";
      return;
    }
    runProof(Number(id));
  });
  const s = await api("/portal/session");
  if (s.ok && s.body?.member) await start(s.body);
  else showSignin();
  document.body.dataset.ready = "1";
}

boot();
