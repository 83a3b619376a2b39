// The peer WebSocket (docs/websocket.md) with the portal session's cookie: requests answered
// by id, pushes dispatched by type. The server's hello says the session is logged in
// ("auth": "portal", "member").
export class PeerError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

export class Peer {
  constructor(onPush, onState) {
    this.onPush = onPush;
    this.onState = onState;
    this.pending = new Map();
    this.next = 1;
    this.hello = null;
    this.ws = null;
    this.stopped = false;
    this.retry = 500;
  }

  url() {
    const base = document.querySelector('meta[name="voltbourse-base"]')?.content || "";
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "/ws";
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url());
      this.ws = ws;
      let first = true;
      ws.onmessage = (ev) => {
        let m;
        try { m = JSON.parse(ev.data); } catch { return; }
        if (first) {
          first = false;
          if (m.type !== "hello" || m.auth !== "portal" || !m.member) {
            reject(new PeerError("NOT_AUTHENTICATED", "The server did not recognise the portal session."));
            ws.close();
            return;
          }
          this.hello = m;
          this.retry = 500;
          this.onState("ok");
          resolve(m);
          return;
        }
        if ((m.type === "response" || m.type === "error") && this.pending.has(m.id)) {
          const p = this.pending.get(m.id);
          this.pending.delete(m.id);
          if (m.type === "response") p.resolve(m.result);
          else p.reject(new PeerError(m.code, m.message));
          return;
        }
        this.onPush(m);
      };
      ws.onclose = (ev) => {
        for (const p of this.pending.values()) p.reject(new PeerError("DISCONNECTED", "The connection closed."));
        this.pending.clear();
        if (first) reject(new PeerError("DISCONNECTED", `The connection was refused (${ev.code}).`));
        if (this.stopped) return;
        this.onState("bad", ev.code);
        if (ev.code === 4003 || ev.code === 1008) return; // suspended or policy: do not hammer
        setTimeout(() => { if (!this.stopped) this.connect().then(() => this.onState("reconnected"), () => {}); },
                   this.retry);
        this.retry = Math.min(this.retry * 2, 15000);
      };
    });
  }

  request(msg, timeoutMs = 15000) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new PeerError("DISCONNECTED", "Not connected to the exchange."));
    }
    const id = `p${this.next++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new PeerError("TIMEOUT", "The exchange did not answer in time."));
      }, timeoutMs);
      this.pending.set(id, { resolve: (r) => { clearTimeout(timer); resolve(r); },
                             reject: (e) => { clearTimeout(timer); reject(e); } });
      this.ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  close() {
    this.stopped = true;
    if (this.ws) this.ws.close();
  }
}
