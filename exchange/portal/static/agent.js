// "My agent": the managed trading agent the platform runs for the member within limits the member
// signs in the wallet (an EIP-712 Delegation). The form's decimals are parsed exactly (BigInt,
// never a float) and sent as decimal strings to /portal/agent/prepare; the typed data the server
// returns is checked against what was typed before the wallet is asked to sign it; the status
// (GET /portal/agent) refreshes every few seconds while the section is on screen.
import * as fmt from "./format.js";

export const MAX_HOURS = 720; // 30 days: the server's MAX_DELEGATION_DAYS
const REFRESH_MS = 3000;

// --------------------------------------------------------------------------- exact parsing (pure)

// BigInt `value` with `scale` decimals -> the plainest exact decimal text ("95", "2.5", "0.05").
export function decimalText(value, scale) {
  let v = BigInt(value);
  const neg = v < 0n;
  if (neg) v = -v;
  const base = 10n ** BigInt(scale);
  let frac = scale > 0 ? (v % base).toString().padStart(scale, "0").replace(/0+$/, "") : "";
  return (neg ? "-" : "") + (v / base).toString() + (frac ? "." + frac : "");
}

// money units (1e-8 EUR) -> EUR with every significant decimal and at least cents: "1.00", "0.12345678"
export function eurExact(units) {
  const t = fmt.fixed(units, 8);
  return t.replace(/(\.\d\d\d*?)0+$/, "$1");
}

const FIELDS = [
  // id, body key, scale, label, the smallest value allowed (BigInt) and why, an example
  ["buy", "max_buy_price_eur_mwh", 2, "Buy price cap", 0n, "", "95.50"],
  ["sell", "min_sell_price_eur_mwh", 2, "Sell price floor", 0n, "", "140"],
  ["max", "max_order_kwh", 3, "Largest order", 1n, "must be at least 0.001 kWh (1 Wh)", "2.5"],
  ["budget", "daily_budget_eur", 8, "Daily budget", 0n, "", "1.50"],
  ["reserve", "battery_reserve_kwh", 3, "Battery reserve", 0n, "", "0"],
  ["capacity", "battery_capacity_kwh", 3, "Battery capacity", 0n, "", "10"],
  ["power", "battery_power_kw", 3, "Battery power", 0n, "", "5"],
];
const OPTIONAL = new Set(["reserve", "capacity", "power"]); // empty means 0

// The strategies (the server's GET /portal/agent "strategies" says which this exchange runs).
export const STRATEGIES = {
  limits: "limits: buys at your cap, sells at your floor, in the next 4 open hours",
  prosumer: "prosumer: sells your expected surplus and buys your expected shortfall, from your meter's last 7 days",
  battery: "battery: charges in the cheap hours of your tariff, sells what it stored in the dear ones",
};

// The form's texts -> {body, values} for POST /portal/agent/prepare, or {errors: [{field, message}]}.
// `values` holds the integers the delegation must carry (ticks, Wh, money units).
export function limitsFromForm(texts) {
  const errors = [];
  const strategy = String(texts.strategy || "limits");
  const body = { strategy };
  if (!Object.hasOwn(STRATEGIES, strategy)) errors.push({ field: "strategy", message: `Unknown strategy ${strategy}` });
  const values = {};
  for (const [id, key, scale, label, min, why, example] of FIELDS) {
    let text = String(texts[id] ?? "").trim();
    if (OPTIONAL.has(id) && text === "") text = "0";
    const r = fmt.parseDecimal(text, scale, { what: label });
    if (r.error) {
      let message = r.error;
      if (/at most/.test(message)) message += ` (the unit is ${unitOf(scale, id)})`;
      else if (/enter a decimal/.test(message)) message = `${label}: enter a plain decimal number, like ${example}`;
      errors.push({ field: id, message });
      continue;
    }
    if (r.value >= 10n ** BigInt(9 + scale)) {
      errors.push({ field: id, message: `${label} is too large (at most 9 digits before the decimal point)` });
      continue;
    }
    if (r.value < min) {
      errors.push({ field: id, message: `${label} ${why}` });
      continue;
    }
    body[key] = decimalText(r.value, scale);
    values[id] = r.value;
  }
  const hoursText = String(texts.expiry ?? "").trim();
  if (!/^\d{1,4}$/.test(hoursText) || Number(hoursText) < 1 || Number(hoursText) > MAX_HOURS) {
    errors.push({ field: "expiry", message: `Valid for: enter a whole number of hours from 1 to ${MAX_HOURS}` });
  } else {
    body.expires_in_hours = Number(hoursText);
  }
  const hours = [...new Set((texts.hours || []).map(Number))].sort((a, b) => a - b);
  if (hours.some((h) => !Number.isInteger(h) || h < 0 || h > 23)) {
    errors.push({ field: "hours", message: "Excluded hours are local hours 0 to 23" });
  }
  if (hours.length === 24) {
    errors.push({ field: "hours", message: "Every hour is excluded: the agent would never trade. Untick at least one hour" });
  }
  body.excluded_hours = hours;
  if (strategy === "battery" && values.capacity !== undefined && values.power !== undefined) {
    if (values.capacity === 0n || values.power === 0n) {
      errors.push({ field: "capacity", message: "The battery strategy needs your battery's capacity and power" });
    } else if (values.reserve !== undefined && values.reserve >= values.capacity) {
      errors.push({ field: "reserve", message: "The battery reserve must be below the battery's capacity" });
    }
  }
  return errors.length ? { errors } : { body, values };
}

function unitOf(scale, id) {
  return { buy: "0.01 EUR/MWh", sell: "0.01 EUR/MWh", max: "1 Wh = 0.001 kWh", reserve: "1 Wh = 0.001 kWh",
           capacity: "1 Wh = 0.001 kWh", power: "1 W = 0.001 kW", budget: "0.00000001 EUR" }[id] || `10^-${scale}`;
}

// The typed data the server prepared must say what the member typed, for this market, naming the
// member's agent key, on the exchange's chain: otherwise the page does not ask the wallet to sign.
// -> a list of differences (empty: it matches).
export function checkPrepared(typed, { values, body }, { market, delegate, chainId, nowS }) {
  const out = [];
  const m = typed?.message || {};
  const eq = (a, b) => { try { return BigInt(a) === BigInt(b); } catch { return false; } };
  if (typed?.primaryType !== "Delegation") out.push(`primaryType is ${typed?.primaryType}, not Delegation`);
  if (chainId !== undefined && !eq(typed?.domain?.chainId, chainId)) out.push(`chain id ${typed?.domain?.chainId}`);
  if (m.market !== market) out.push(`market ${m.market}, not ${market}`);
  if (delegate && String(m.delegate).toLowerCase() !== delegate.toLowerCase()) out.push(`delegate ${m.delegate}`);
  if (m.strategy !== body.strategy) out.push(`strategy ${m.strategy}, chosen ${body.strategy}`);
  for (const [id, key] of [["buy", "maxBuyPrice"], ["sell", "minSellPrice"], ["max", "maxOrderWh"],
                           ["budget", "dailyBudget"], ["reserve", "batteryReserveWh"],
                           ["capacity", "batteryCapacityWh"], ["power", "batteryPowerW"]]) {
    if (!eq(m[key], values[id])) out.push(`${key} ${m[key]}, typed ${values[id]}`);
  }
  if (String(m.excludedHours) !== body.excluded_hours.join(",")) out.push(`excludedHours "${m.excludedHours}"`);
  // The expiry is set by the market's clock (simulated in a demo), known here from the hello:
  // it must be the requested hours after it, allowing for the time since (up to a day).
  const want = nowS + body.expires_in_hours * 3600;
  if (!Number.isSafeInteger(m.expiry) || m.expiry < want - 600 || m.expiry > want + 86400) out.push(`expiry ${m.expiry}`);
  return out;
}

// The market's time when the page connected (the hello's market_time; the wall clock without it).
function marketNowS(hello) {
  const t = Date.parse(hello?.market_time || hello?.server_time || "");
  return Math.floor((Number.isNaN(t) ? Date.now() : t) / 1000);
}

const hourLabel = (h) => `${String(h).padStart(2, "0")}:00–${String((h + 1) % 24).padStart(2, "0")}:00`;

// The signed limits (a Delegation message) -> [label, text] rows in the member's units.
export function describeLimits(m, tz) {
  const hours = String(m.excludedHours ?? "").split(",").filter((h) => h.trim() !== "").map(Number);
  return [
    ["Market", String(m.market)],
    ["Agent key (delegate)", String(m.delegate)],
    ["Strategy", STRATEGIES[m.strategy] || String(m.strategy)],
    ["Buy price cap", `${fmt.price(m.maxBuyPrice)} EUR/MWh`],
    ["Sell price floor", `${fmt.price(m.minSellPrice)} EUR/MWh`],
    ["Largest order", `${fmt.kwh(m.maxOrderWh)} kWh`],
    ["Daily budget", `${eurExact(m.dailyBudget)} EUR`],
    ["Battery reserve", `${fmt.kwh(m.batteryReserveWh)} kWh`],
    ["Battery", BigInt(m.batteryCapacityWh ?? 0) > 0n
      ? `${fmt.kwh(m.batteryCapacityWh)} kWh, ${fmt.kwh(m.batteryPowerW ?? 0)} kW` : "none"],
    ["Hours left alone", hours.length ? hours.map(hourLabel).join(", ") + ` (${tz})` : "none"],
    ["Expires", `${fmt.dateTime(new Date(Number(m.expiry) * 1000).toISOString(), tz)} (${tz})`],
  ];
}

// --------------------------------------------------------------------------- the view

export function initAgent(ctx) {
  // ctx: {S, api, wallet, refusal, dom: {cell, row, fill, button}, productName, onStatus}
  const { S, api, dom } = ctx;
  const $ = (sel) => document.querySelector(sel);
  let prepared = null;   // {typed, delegation_id, parsed}
  let visible = false;
  let busy = false;

  // the 24 hour toggles
  const boxes = $("#ag-hour-boxes");
  boxes.replaceChildren(...Array.from({ length: 24 }, (_, h) => {
    const l = document.createElement("label");
    l.className = "inline hour";
    const i = document.createElement("input");
    i.type = "checkbox";
    i.name = "ag-hour";
    i.value = String(h);
    i.id = `ag-hour-${h}`;
    l.append(i, document.createTextNode(" " + hourLabel(h)));
    return l;
  }));

  function dl(target, rows) {
    const el = $(target);
    el.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      el.append(dt, dd);
    }
  }

  function result(text, kind = "") {
    const e = $("#ag-result");
    e.textContent = text;
    e.className = "status" + (kind ? " " + kind : "");
  }

  function showErrors(errors) {
    const box = $("#ag-errors");
    for (const id of ["strategy", "buy", "sell", "max", "budget", "reserve", "capacity", "power", "expiry"]) {
      $(`#ag-${id}`).setAttribute("aria-invalid", errors.some((e) => e.field === id) ? "true" : "false");
    }
    if (!errors.length) { box.hidden = true; box.replaceChildren(); return; }
    const ul = document.createElement("ul");
    ul.className = "plain";
    for (const e of errors) {
      const li = document.createElement("li");
      li.textContent = e.message.endsWith(".") ? e.message : e.message + ".";
      ul.append(li);
    }
    box.replaceChildren(ul);
    box.hidden = false;
  }

  // the server's refusal of the limits -> the fields it names
  function fieldsOf(message) {
    const m = message.toLowerCase();
    const out = [];
    if (/floor|cap|price/.test(m)) out.push("buy", "sell");
    if (/max order|max_order/.test(m)) out.push("max");
    if (/budget/.test(m)) out.push("budget");
    if (/reserve/.test(m)) out.push("reserve");
    if (/capacity|power/.test(m)) out.push("capacity", "power");
    if (/strategy/.test(m)) out.push("strategy");
    if (/expir/.test(m)) out.push("expiry");
    return out;
  }

  function texts() {
    const v = (id) => $(`#ag-${id}`).value;
    return { strategy: v("strategy"), buy: v("buy"), sell: v("sell"), max: v("max"), budget: v("budget"),
             reserve: v("reserve"), capacity: v("capacity"), power: v("power"), expiry: v("expiry"),
             hours: [...document.querySelectorAll('input[name="ag-hour"]:checked')].map((i) => Number(i.value)) };
  }

  function closeReview() {
    prepared = null;
    $("#ag-review-box").hidden = true;
  }

  async function review(ev) {
    ev.preventDefault();
    if (busy) return;
    closeReview();
    result("");
    const parsed = limitsFromForm(texts());
    if (parsed.errors) {
      showErrors(parsed.errors);
      result("Not sent: correct the limits above.", "bad");
      return;
    }
    showErrors([]);
    busy = true;
    $("#ag-review").disabled = true;
    try {
      result("Preparing the delegation…");
      const r = await api("/portal/agent/prepare", { method: "POST", csrf: true, body: parsed.body });
      if (!r.ok) {
        const msg = r.body?.message || "";
        showErrors([{ field: "server", message: `Refused by the exchange (${r.body?.error || "HTTP " + r.status}): ${msg}` }]);
        for (const id of fieldsOf(msg)) $(`#ag-${id}`).setAttribute("aria-invalid", "true");
        result("Not enabled: the exchange refused these limits.", "bad");
        return;
      }
      const typed = r.body.typed_data;
      const diff = checkPrepared(typed, parsed, { market: S.hello.market_id, delegate: S.agent?.agent,
                                                   chainId: S.hello.eip712_domain?.chainId,
                                                   nowS: marketNowS(S.hello) });
      if (diff.length) {
        showErrors([{ field: "server", message: `The delegation the exchange prepared differs from your limits ` +
                                                `(${diff.join("; ")}); nothing was signed` }]);
        result("Not enabled.", "bad");
        return;
      }
      prepared = { typed, delegation_id: r.body.delegation_id, parsed };
      dl("#ag-review-list", describeLimits(typed.message, S.tz));
      $("#ag-typed").textContent = JSON.stringify(typed, null, 2);
      $("#ag-replace-note").hidden = !S.agent?.delegation;
      $("#ag-review-box").hidden = false;
      result("Check the limits below, then sign them in your wallet.");
      $("#ag-sign").focus();
    } catch (e) {
      result(`Not prepared: ${e.message}`, "bad");
    } finally {
      busy = false;
      $("#ag-review").disabled = false;
    }
  }

  async function signAndEnable() {
    if (!prepared || busy) return;
    busy = true;
    $("#ag-sign").disabled = true;
    const { typed } = prepared;
    try {
      result("Confirm the delegation in your wallet…");
      const signature = await ctx.wallet.signTypedData(S.session.member, typed, "delegation signature");
      if (S.agent?.delegation) {
        // Replacing limits: revoke first, so that no order placed under the old limits keeps resting
        // (the server's new run would otherwise adopt them as they are). If the new delegation is
        // then refused, the agent stays off: the safe side.
        result("Revoking the current delegation…");
        const d = await api("/portal/agent", { method: "DELETE", csrf: true });
        if (!d.ok) {
          result(`Not changed: the current delegation could not be revoked (${d.body?.error || "HTTP " + d.status}: ` +
                 `${d.body?.message || ""})`, "bad");
          return;
        }
      }
      result("Turning the agent on…");
      const r = await api("/portal/agent", { method: "POST", csrf: true, body: { typed_data: typed, signature } });
      if (!r.ok) {
        const hint = r.body?.error === "BAD_SIGNATURE" ? "The signature does not match your address. " : "";
        result(`Not enabled. ${hint}(${r.body?.error || "HTTP " + r.status}: ${r.body?.message || ""})`, "bad");
        await refresh();
        return;
      }
      closeReview();
      render(r.body);
      result(`The agent is on (delegation ${short(r.body.delegation?.delegation_id)}), until ` +
             `${fmt.dateTime(r.body.delegation.expires_at, S.tz)}.`, "good");
    } catch (e) {
      result(`Not enabled: ${e.message}`, "bad");
    } finally {
      busy = false;
      $("#ag-sign").disabled = false;
    }
  }

  const short = (h) => (h ? h.slice(0, 10) + "…" + h.slice(-6) : "–");

  function confirmRevoke(n) {
    const d = $("#agent-confirm");
    $("#agent-confirm-text").textContent = `The agent stops at once and its ${n} resting order${n === 1 ? "" : "s"} ` +
      "will be cancelled. You can turn it on again later with a new signature.";
    d.returnValue = "";
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.showModal();
      $("#agent-confirm-cancel").focus();
    });
  }

  async function revoke() {
    const n = S.agent?.orders?.length ?? 0;
    if (!(await confirmRevoke(n))) {
      result("Not revoked: the agent is still on.");
      return;
    }
    $("#agent-revoke").disabled = true;
    try {
      const r = await api("/portal/agent", { method: "DELETE", csrf: true });
      if (!r.ok) {
        result(`Not revoked (${r.body?.error || "HTTP " + r.status}: ${r.body?.message || ""})`, "bad");
        return;
      }
      result(r.body.revoked
        ? `Revoked: the agent stopped and ${r.body.cancelled_orders} order${r.body.cancelled_orders === 1 ? " was" : "s were"} cancelled.`
        : `There was no active delegation; ${r.body.cancelled_orders} order(s) cancelled.`, "good");
      await refresh();
      ctx.onChange?.();
    } finally {
      $("#agent-revoke").disabled = false;
    }
  }

  function render(st) {
    S.agent = st;
    const state = $("#agent-state");
    state.textContent = st.active ? "Active" : "Off";
    state.className = "badge " + (st.active ? "on" : "off");
    const d = st.delegation;
    const rows = [["State", st.active ? "active: trading within your limits" : "off: the agent places no orders"],
                  ["Agent key", st.agent]];
    if (d) {
      rows.push(["Delegation", d.delegation_id]);
      rows.push(...describeLimits(d.limits, S.tz).filter(([k]) => k !== "Agent key (delegate)" && k !== "Market"));
    }
    if (st.note) rows.push(["Why it rests nothing now", st.note]);
    rows.push(["Orders placed", fmt.count(st.placed)], ["Orders refused by the limits", fmt.count(st.refused)],
              ["Spent today (buys placed, at their price)", `${fmt.eur(st.spent_today_units)} EUR`]);
    dl("#agent-summary", rows);
    const open = new Map((S.orders || []).map((o) => [o.order_id, o.remaining]));  // from the peer "orders"
    dom.fill("#agent-orders", (st.orders || []).map((o) => dom.row([
      dom.cell(String(o.order_id)), dom.cell(ctx.productName(o.product_id)), dom.cell(o.side),
      dom.cell(fmt.price(o.price), "num"), dom.cell(fmt.kwh(o.quantity), "num"),
      dom.cell(open.has(o.order_id) ? fmt.kwh(open.get(o.order_id)) : "–", "num"),
    ], { "data-order-id": String(o.order_id), "data-side": o.side })), st.active ? "No order resting yet." : "None.");
    $("#agent-revoke").hidden = !d && !(st.orders || []).length;
    $("#ag-review").textContent = d ? "Review and sign new limits in your wallet" : "Review and sign in your wallet";
    $("#agent-updated").textContent = `Updated ${fmt.hm(new Date().toISOString(), S.tz)}:` +
      `${String(new Date().getSeconds()).padStart(2, "0")}; refreshed every ${REFRESH_MS / 1000} s while shown.`;
    for (const o of $("#ag-strategy").options) {  // only what this exchange runs
      o.disabled = Array.isArray(st.strategies) && !st.strategies.includes(o.value);
    }
    ctx.onStatus?.(st);
  }

  async function refresh() {
    if (!S.session) return;
    let r;
    try {
      r = await api("/portal/agent");
    } catch {
      return;
    }
    if (r.ok) render(r.body);
    else $("#agent-updated").textContent = `Status unavailable (${r.body?.error || "HTTP " + r.status}).`;
  }

  // fill the form from the active delegation, so a change starts from what is signed
  function prefill(st) {
    const m = st?.delegation?.limits;
    if (!m || $("#ag-buy").value) return;
    $("#ag-buy").value = decimalText(m.maxBuyPrice, 2);
    $("#ag-sell").value = decimalText(m.minSellPrice, 2);
    $("#ag-max").value = decimalText(m.maxOrderWh, 3);
    $("#ag-budget").value = decimalText(m.dailyBudget, 8);
    $("#ag-reserve").value = decimalText(m.batteryReserveWh, 3);
    $("#ag-capacity").value = decimalText(m.batteryCapacityWh ?? 0, 3);
    $("#ag-power").value = decimalText(m.batteryPowerW ?? 0, 3);
    if (Object.hasOwn(STRATEGIES, m.strategy)) $("#ag-strategy").value = m.strategy;
    const ex = new Set(String(m.excludedHours).split(",").filter((x) => x !== "").map(Number));
    for (const i of document.querySelectorAll('input[name="ag-hour"]')) i.checked = ex.has(Number(i.value));
  }

  $("#agent-form").addEventListener("submit", review);
  $("#ag-sign").addEventListener("click", signAndEnable);
  $("#ag-back").addEventListener("click", () => { closeReview(); result(""); $("#ag-buy").focus(); });
  $("#agent-revoke").addEventListener("click", revoke);
  for (const id of ["strategy", "buy", "sell", "max", "budget", "reserve", "capacity", "power", "expiry"]) {
    $(`#ag-${id}`).addEventListener("input", closeReview);
  }
  boxes.addEventListener("change", closeReview);

  new IntersectionObserver((entries) => {
    visible = entries.some((e) => e.isIntersecting);
    if (visible) refresh();
  }).observe($("#agent-section"));
  setInterval(() => { if (visible && document.visibilityState === "visible") refresh(); }, REFRESH_MS);

  return {
    async start() {
      $("#ag-tz").textContent = S.tz;
      await refresh();
      prefill(S.agent);
    },
    refresh,
  };
}
