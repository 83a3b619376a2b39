// "My collateral": the member's collateral on chain, what the exchange counts of it (free to
// trade, reserved by open buy orders, unsettled trades), its deposits and its withdrawal
// requests, from the peer message `my_collateral` (docs/websocket.md, settlement). Money
// arrives as decimal strings of 1e-8 EUR units and is only ever handled as BigInt/strings.
const REFRESH_MS = 10000;

export function initCollateral({ S, fmt, dom }) {
  const { cell, row, fill } = dom;
  const $ = (sel) => document.querySelector(sel);
  let visible = false;
  let off = false;      // the exchange runs without settlement (UNAVAILABLE): nothing to poll
  let busy = false;
  let timer = null;

  function say(text, kind = "") {
    const e = $("#collateral-status");
    e.textContent = text;
    e.className = "status" + (kind ? " " + kind : "");
  }

  // one figure: EUR with cents (half-even), the exact amount in units as data and title
  function figure(id, label, units, hint) {
    const d = document.createElement("div");
    d.className = "kpi";
    d.id = id;
    d.setAttribute("role", "listitem");
    d.dataset.units = units;
    const v = document.createElement("span");
    v.className = "kpi-value";
    v.textContent = `${fmt.eur(units)} EUR`;
    v.title = `exactly ${fmt.fixed(units, 8)} EUR`;
    const l = document.createElement("span");
    l.className = "kpi-label";
    l.textContent = label;
    d.append(v, l);
    if (hint) {
      const h = document.createElement("span");
      h.className = "kpi-hint";
      h.textContent = hint;
      d.append(h);
    }
    return d;
  }

  function render(c) {
    const payable = BigInt(c.engine.net_payable);
    $("#collateral-kpis").replaceChildren(
      figure("coll-chain", "on chain (the registry)", c.chain.collateral),
      figure("coll-free", "free to trade", c.engine.free, "not backing open orders or unsettled trades"),
      figure("coll-orders", "reserved by open buy orders", c.engine.open_exposure),
      figure("coll-unsettled", payable < 0n ? "unsettled: owed to you" : "unsettled: you owe",
             (payable < 0n ? -payable : payable).toString(), "trades not yet settled on chain"),
      figure("coll-withdrawing", "withdrawals being processed", c.withdrawals_pending),
    );
    $("#collateral-chain").textContent = `As of block ${c.chain.block} of chain ${c.chain.chain_id}; ` +
      `registry ${c.chain.registry}. The exchange counts ${fmt.eur(c.engine.collateral)} EUR of it.`;
    fill("#deposits", c.deposits.map((d) => row([
      cell(String(d.block)), cell(fmt.dateTime(d.seen_at, S.tz)), cell(`${fmt.eur(d.amount)}`, "num"),
      cell(`${fmt.eur(d.collateral_after)}`, "num"), cell(fmt.shortAddr(d.tx_hash), "mono"),
    ], { "data-units": d.amount, "data-tx": d.tx_hash })), "No deposit on chain yet.");
    const state = { requested: "requested (being checked)", reserved: "approved, being paid out",
                    executed: "paid out", rejected: "refused" };
    fill("#withdrawals", c.withdrawals.map((w) => row([
      cell(String(w.request_id)), cell(fmt.eur(w.amount), "num"),
      cell(state[w.state] || w.state, `st-w-${w.state}`), cell(w.reason || "–"),
      cell(fmt.dateTime(w.updated_at, S.tz)),
    ], { "data-request-id": String(w.request_id), "data-state": w.state })), "No withdrawal requests.");
  }

  async function refresh() {
    if (!S.peer || off || busy) return;
    busy = true;
    try {
      const c = await S.peer.request({ type: "my_collateral" });
      S.collateral = c;
      render(c);
      say(`Updated ${fmt.hm(new Date().toISOString(), S.tz)}.`);
    } catch (e) {
      if (e.code === "UNAVAILABLE") {
        off = true;
        $("#collateral-body").hidden = true;
        say("This exchange runs without on-chain settlement: there is no collateral on chain, and no deposits or " +
            "withdrawals to show. The community operator manages your trading limit.", "note");
        $("#collateral-section").dataset.unavailable = "1";
      } else if (e.code === "CHAIN_UNAVAILABLE") {
        say(`The chain did not answer; the figures below may be out of date. Retrying. (${e.code}: ${e.message})`, "bad");
      } else if (e.code !== "DISCONNECTED") {
        say(`Could not read your collateral. (${e.code}: ${e.message})`, "bad");
      }
    } finally {
      busy = false;
    }
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  new IntersectionObserver((entries) => {
    visible = entries.some((e) => e.isIntersecting);
    if (visible) refresh();
  }).observe($("#collateral-section"));
  setInterval(() => { if (visible && document.visibilityState === "visible") refresh(); }, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (visible && document.visibilityState === "visible") refresh(); });

  return { start: refresh, refresh: soon };
}
