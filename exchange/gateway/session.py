"""One peer WebSocket connection: login, requests, rate limit, bounded send queue.

Engine requests (place, cancel, modify, cancel_all) are queued to the market
runtime with their origin and answered by :class:`MarketData` after their
commit. Reads (orders, trades, positions) and subscriptions are answered here.
A session never blocks the engine: outgoing messages go through a bounded
queue drained by the session's own sender task, and a peer that does not keep
up is disconnected (close code 1013) instead of stalling anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import CancelAll as CancelAllCmd
from exchange.core.model import CancelOrder, ModifyOrder, PlaceOrder, Side, TimeInForce
from exchange.core.model import PlaceBlock as PlaceBlockCmd
from exchange.core.units import iso, iso_dt, to_us
from exchange.gateway.http import TokenFailures, sign_in_host
from exchange.gateway.keys import (
    BASE_PATH,
    MARKET,
    PEER_AUTHENTICATORS,
    PROTOCOL,
    SETTINGS,
    SOCKETS,
    WS_REQUESTS,
    PeerAuth,
)
from exchange.gateway.marketdata import MARKET_DATA, MarketData, Pending
from exchange.gateway.metrics import METRICS
from exchange.gateway.wsframes import MAX_WRITE_BYTES, FrameWriter
from exchange.protocol import auth, siwe
from exchange.protocol.errors import VoltbourseError, register
from exchange.protocol.frames import read_request_id
from exchange.protocol.messages import CORE_REQUESTS, PROTOCOL_VERSION, ProtocolError, WireProtocol
from exchange.runtime.config import Settings
from exchange.runtime.market import MarketBusy, MarketUnavailable
from exchange.runtime.service import Market

log = logging.getLogger(__name__)

MAX_LOGIN_ATTEMPTS = 5
SIWE_NONCE_TTL = timedelta(minutes=10)  # a connection's Sign-In with Ethereum nonce is good this long
SIGNED_OUT = 4401  # close code: the session (e.g. a portal's) this connection was signed in by ended
register("SIGNED_OUT", 401, "the session this connection was signed in by (a member portal session) ended: "
         "close code 4401")
HEARTBEAT_TIMEOUT = 4008
"""Close code for a peer that answered the server's ping with nothing (no pong, no frame) in
time. aiohttp's own ``heartbeat=`` drops the TCP connection without a close frame (code 1006
at the peer), so the session runs the heartbeat itself."""
FLUSH_TIMEOUT_S = 10.0  # closing with a flush: a peer that has not read what was queued by then is dropped
CLOSE_TIMEOUT_S = 5.0  # sending the close frame to a peer that does not read: then the socket is dropped
_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_TIFS = {"gtc": TimeInForce.GTC, "ioc": TimeInForce.IOC, "fok": TimeInForce.FOK}


_CORE = WireProtocol(CORE_REQUESTS)


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()

    def usage(self) -> dict[str, float]:
        """What is left of the rate limit now: ``remaining`` messages in the burst, the ``limit``
        per second and ``burst``, and ``reset_ms`` until the burst is full again."""
        self._refill()
        return {"remaining": int(self.tokens), "limit_per_s": self.rate, "burst": self.burst,
                "reset_ms": int((self.burst - self.tokens) / self.rate * 1000)}

    def retry_after_ms(self) -> int:
        """Milliseconds until one more message is accepted."""
        self._refill()
        return 0 if self.tokens >= 1 else int((1 - self.tokens) / self.rate * 1000) + 1

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ConnectionCounts:
    """Peer connections the handshake checks: per client address, and not logged in yet. One
    for the whole server: the limits (``WS_CONNECTIONS_PER_IP``, ``WS_ANONYMOUS_MAX``) are the
    server's, whatever the number of markets it hosts."""

    def __init__(self) -> None:
        self.per_ip: dict[str, int] = {}
        self.anonymous = 0
        self.token_failures = TokenFailures()  # wrong operator tokens per address, the server's too

    def opened(self, ip: str) -> None:
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.anonymous += 1

    def closed(self, ip: str, anonymous: bool) -> None:
        n = self.per_ip.get(ip, 0) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)
        if anonymous:
            self.anonymous -= 1


class Limits:
    """A market app's view of the server's :class:`ConnectionCounts`, and ``stopping`` once
    this app is shutting down (its sessions then end without cancelling)."""

    def __init__(self, counts: ConnectionCounts | None = None) -> None:
        self.counts = counts if counts is not None else ConnectionCounts()
        self.stopping = False


LIMITS: web.AppKey[Limits] = web.AppKey("ws_limits", Limits)


class Session:
    def __init__(self, ws: web.WebSocketResponse, market: Market, md: MarketData, settings: Settings,
                 metrics: Any = None, handlers: dict[str, Any] | None = None, protocol: WireProtocol | None = None,
                 app: web.Application | None = None, host: str = "localhost", secure: bool = False,
                 path: str = "/ws", frames: FrameWriter | None = None, siwe_refused: str | None = None) -> None:
        """``host``, ``secure``: what a sign-in must name (``sign_in_host``); ``siwe_refused``:
        why this connection gets no sign-in offer (an address the exchange does not know)."""
        self.ws = ws
        self.frames = frames if frames is not None else FrameWriter(ws, None)  # None: ws.send_str each
        self.app = app
        self.handlers = handlers if handlers is not None else {}
        self.protocol = protocol if protocol is not None else _CORE
        self.market = market
        self.md = md
        self.settings = settings
        self.metrics = metrics
        self.member: MemberId | None = None
        self.auth: str | None = None  # how it signed in: "siwe", "challenge" (deprecated), or a PeerAuth's via
        self.auth_ref = ""  # with a PeerAuth: its ref (which portal session signed this connection in)
        self.challenge = auth.new_challenge(settings.market_id)  # deprecated login
        now = datetime.now(UTC).replace(microsecond=0)
        # the Sign-In with Ethereum offer of this connection (hello.siwe); its nonce is single use
        self.siwe: dict[str, Any] | None = None if siwe_refused is not None else {
            "domain": host, "uri": f"{'wss' if secure else 'ws'}://{host}{path}", "chain_id": settings.chain_id,
            "version": "1", "statement": siwe.safe_statement(f"Sign in to the Voltbourse exchange of community "
                                                              f"{settings.market_id}."),
            "nonce": siwe.new_nonce(), "issued_at": siwe.format_time(now),
            "expiration_time": siwe.format_time(now + SIWE_NONCE_TTL)}
        self.siwe_expires = now + SIWE_NONCE_TTL
        self.siwe_path = path  # the URI's path a login must name: this market's endpoint
        self.siwe_refused = siwe_refused
        self.scheme = "wss" if secure else "ws"
        self.login_failures = 0
        self.bucket = TokenBucket(settings.ws_rate_per_s, settings.ws_burst)
        # frames dropped by the rate limit use up this patience; it refills at the same rate,
        # so bursts that stay under the average rate never close the connection
        self.patience = TokenBucket(settings.ws_rate_per_s, settings.ws_burst)
        self.out: asyncio.Queue[str | tuple | None] = asyncio.Queue(settings.ws_send_queue)
        self.queued_bytes = 0
        self.closed = False
        self.on_login: Any = None  # called once the session is bound to a member
        self.cancel_on_disconnect = False
        self.dead_man: asyncio.TimerHandle | None = None
        self.sender = asyncio.create_task(self._sender())
        self.alive = True  # a frame (pong or any other) arrived since the last ping
        self.busy = False  # a request of the peer is being served: its next frames wait to be read
        self.heartbeat = asyncio.create_task(self._heartbeat())
        self.login_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            settings.ws_login_timeout_s, self._login_timeout)

    def _login_timeout(self) -> None:
        self.login_timer = None
        if self.member is None and not self.closed:
            self.error(None, "NOT_AUTHENTICATED", f"no login within {self.settings.ws_login_timeout_s:g} s")
            self.close(WSCloseCode.POLICY_VIOLATION, "login timeout", flush=True)

    # ------------------------------------------------------------------ output
    def send(self, msg: dict) -> None:
        self.send_raw(orjson.dumps(msg).decode())

    def send_raw(self, data: str) -> None:
        if self.closed:
            return
        size = len(data)
        if self.queued_bytes + size > self.settings.ws_send_queue_bytes:
            self._slow("bytes")
            return
        try:
            self.out.put_nowait(data)
        except asyncio.QueueFull:
            self._slow("messages")
            return
        self.queued_bytes += size

    def _slow(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.slow_consumer_dropped()
        log.warning("dropping slow consumer %s (%d messages, %d bytes queued; %s cap)", self.member,
                    self.out.qsize(), self.queued_bytes, what)
        self.close(WSCloseCode.TRY_AGAIN_LATER, f"slow consumer: send queue full ({what})")

    def metrics_error(self, code: str) -> None:
        if self.metrics is not None:
            self.metrics.ws_error(code)

    def error(self, request_id: Any, code: str, message: str) -> None:
        self.metrics_error(code)
        self.send({"type": "error", "id": request_id, "code": code, "message": message})

    async def _sender(self) -> None:
        """Write what is queued, in order: everything queued by the time it runs goes out in
        one write (a group's answers, order updates and fills; ``FrameWriter``)."""
        out = self.out
        burst: list[str] = []
        try:
            while True:
                data: str | tuple | bool | None = await out.get()
                size = 0
                while isinstance(data, str):
                    burst.append(data)
                    size += len(data)
                    if size >= MAX_WRITE_BYTES:  # one write's worth: the rest waits in the queue,
                        data = False  # still counted against its caps
                    else:
                        data = out.get_nowait() if out.qsize() else False  # False: nothing more queued yet
                if burst:
                    try:
                        await self.frames.send(burst)
                    finally:  # counted until written: a peer that does not read fills the caps
                        self.queued_bytes -= size
                    burst.clear()
                if data is None:
                    return
                if isinstance(data, tuple):  # (code, reason): close after what was queued before it
                    await self.ws.close(code=data[0], message=data[1])
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return

    async def _heartbeat(self) -> None:
        """Ping the peer every ``ws_heartbeat_s``; a peer that sends nothing back (a pong or any
        other frame) within half of it is closed with :data:`HEARTBEAT_TIMEOUT` and a close frame."""
        interval = self.settings.ws_heartbeat_s
        ws = self.ws
        try:
            while not self.closed:
                await asyncio.sleep(interval)
                if self.closed:
                    return
                self.alive = False
                try:
                    await asyncio.wait_for(ws.ping(), interval / 2)
                except (ConnectionError, RuntimeError):
                    return  # the connection is going: its handler ends the session
                except TimeoutError:
                    pass  # the peer does not read: no answer will come either
                await asyncio.sleep(interval / 2)
                if not self.alive and not self.busy and not self.closed:
                    log.info("peer %s did not answer the ping within %g s: closing", self.member, interval / 2)
                    self.close(HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    return
        except asyncio.CancelledError:
            return

    def close(self, code: int, reason: str, *, flush: bool = False) -> None:
        """Close the connection; with ``flush``, after sending what is already queued
        (so a peer closed for a policy violation sees the errors that led to it)."""
        if self.closed:
            return
        self.closed = True
        self.md.detach(self)
        self._cancel_login_timer()
        if flush:
            try:
                self.out.put_nowait((code, reason.encode()[:120]))
                # a peer that does not read would hold the flush (and the connection) for ever
                asyncio.get_running_loop().call_later(FLUSH_TIMEOUT_S, self._flush_overdue, code, reason)
                return
            except asyncio.QueueFull:
                pass
        self.sender.cancel()
        asyncio.get_running_loop().create_task(self._close_ws(code, reason))

    def _flush_overdue(self, code: int, reason: str) -> None:
        if self.sender.done():
            return
        log.info("peer %s did not read what was sent before its close (%s) within %g s: dropping it",
                 self.member, reason, FLUSH_TIMEOUT_S)
        self.sender.cancel()
        self.frames.abort()
        asyncio.get_running_loop().create_task(self._close_ws(code, reason))

    async def _close_ws(self, code: int, reason: str) -> None:
        """Send the close frame and wait for the peer's (``timeout`` of the response); a peer that
        does not even take the close frame within :data:`CLOSE_TIMEOUT_S` loses its socket."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT_S)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass

    async def finish(self) -> None:
        """End of the connection: flush what is queued, then stop the sender; with
        cancel_on_disconnect, cancel the member's orders (unless the server is shutting down)."""
        if self.dead_man is not None:
            self.dead_man.cancel()
            self.dead_man = None
        self.heartbeat.cancel()
        stopping = self.app is not None and LIMITS in self.app and self.app[LIMITS].stopping
        if self.cancel_on_disconnect and self.member is not None and not stopping:
            log.info("%s disconnected with cancel_on_disconnect: cancelling its orders", self.member)
            self._cancel_everything(self.member)
        self._cancel_login_timer()
        if not self.closed:
            self.closed = True
            self.md.detach(self)
            try:
                self.out.put_nowait(None)
            except asyncio.QueueFull:
                self.sender.cancel()
        try:  # a sender waiting on a peer that stopped reading is not waited for long
            await asyncio.wait_for(asyncio.gather(self.sender, self.heartbeat, return_exceptions=True), FLUSH_TIMEOUT_S)
        except TimeoutError:
            self.frames.abort()

    # ------------------------------------------------------------------ input
    def _cancel_login_timer(self) -> None:
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None

    async def handle(self, raw: str) -> None:
        if not self.bucket.take():
            rid = read_request_id(raw)  # the answer carries the id, so the peer's request does not hang
            if not self.patience.take():
                self.error(rid, "RATE_LIMITED", "rate limit exceeded for too long: closing")
                self.close(WSCloseCode.POLICY_VIOLATION, "rate limit exceeded repeatedly", flush=True)
                return
            self.metrics_error("RATE_LIMITED")
            self.send({"type": "error", "id": rid, "code": "RATE_LIMITED",
                       "message": f"more than {self.settings.ws_rate_per_s:g} messages/s (burst "
                                  f"{self.settings.ws_burst}); this message was dropped",
                       "retry_after_ms": self.bucket.retry_after_ms()})
            return
        t0 = time.perf_counter_ns()
        try:
            msg = self.protocol.parse(raw)
        except ProtocolError as exc:
            self.error(exc.request_id, exc.code, exc.message)
            return
        kind = msg.type
        member = self.member
        try:
            if kind == "ping":
                self.send({"type": "response", "id": msg.id, "result": {"pong": True, "rate": self.bucket.usage(),
                           "server_time": iso_dt(datetime.now(UTC)),
                           "market_time": iso(self.market.runtime.clock.now_us())}})
                return
            if kind == "login":
                self._login(msg)
                return
            if member is None:
                self.error(msg.id, "NOT_AUTHENTICATED", "log in first: sign a Sign-In with Ethereum message "
                           "built from hello.siwe and send `login`")
                return
            if member in self.md.mirror.suspended:
                self.error(msg.id, "MEMBER_SUSPENDED", f"{member} is suspended; this session ends")
                self.close(4003, "member suspended", flush=True)
                return
            if kind == "place":
                self._place(msg, member, t0)
            elif kind == "place_block":
                self._place_block(msg, member, t0)
            elif kind == "cancel":
                oid = self._order_ref(msg, member, blocks=True)
                if oid is not None:
                    self._submit(CancelOrder(0, member, oid), msg.id, kind, t0)
            elif kind == "modify":
                oid = self._order_ref(msg, member)
                if oid is not None:
                    self._submit(ModifyOrder(0, member, oid, msg.price, msg.quantity), msg.id, kind, t0)
            elif kind == "session_options":
                if msg.cancel_on_disconnect is not None:
                    self.cancel_on_disconnect = msg.cancel_on_disconnect
                self.send({"type": "response", "id": msg.id,
                           "result": {"cancel_on_disconnect": self.cancel_on_disconnect}})
            elif kind == "dead_man":
                self._dead_man(msg, member)
            elif kind == "replay":
                self._replay(msg, member)
            elif kind == "cancel_all":
                self._submit(CancelAllCmd(0, member, msg.product_id), msg.id, kind, t0)
            elif kind == "orders":
                self._orders(msg, member)
            elif kind == "order_status":
                self._order_status(msg, member)
            elif kind == "trades":
                await self._trades(msg, member)
            elif kind == "positions":
                await self._positions(msg, member)
            elif kind == "subscribe":
                self._subscribe(msg)
            elif kind == "unsubscribe":
                self._unsubscribe(msg)
            else:
                served = self.handlers.get(kind)
                if served is None:
                    self.error(msg.id, "UNAVAILABLE", f"{kind!r} is not served by this exchange")
                else:
                    result = await served.handler(self.app, member, msg)
                    self.send({"type": "response", "id": msg.id, "result": result})
        except VoltbourseError as exc:
            self.error(msg.id, exc.code, exc.message)
        except MarketBusy as exc:
            self.error(msg.id, "BUSY", f"the exchange is busy, retry shortly ({exc})")
        except MarketUnavailable as exc:
            self.error(msg.id, "UNAVAILABLE", f"the market is not available: {exc}")
        except Exception:  # noqa: BLE001 - a bug must not drop the connection: answered, logged
            log.exception("request %r of %s failed", kind, member)
            self.error(msg.id, "INTERNAL", "the request failed on the server; it was logged")

    def _order_ref(self, msg: Any, member: MemberId, blocks: bool = False) -> OrderId | None:
        """The order a cancel/modify names: its ``order_id``, or my open order with that
        ``client_order_id`` (committed state: a resting order of the book mirror, or, with
        ``blocks`` (a cancel: a block cannot be modified), a block order waiting for its
        auction in the order-status view); None (answered) when there is none."""
        if msg.order_id is not None:
            return OrderId(msg.order_id)
        for o in self.md.mirror.member_orders(member):
            if o["client_order_id"] == msg.client_order_id:
                return OrderId(o["order_id"])
        blk = self.md.order_status.pending_block(member, msg.client_order_id) if blocks else None
        if blk is not None:
            return OrderId(blk.order_id)
        self.error(msg.id, "UNKNOWN_ORDER", f"no open order of yours with client_order_id {msg.client_order_id!r}")
        return None

    def _orders(self, msg: Any, member: MemberId) -> None:
        md = self.md
        if msg.status == "open":  # the committed book mirror's open orders
            orders = md.member_orders(member, msg.product_id)
        else:  # with closed ones: the order status view (exchange.gateway.orderstatus)
            view = md.order_status
            found = view.closed(member, msg.product_id) if msg.status == "closed" \
                else view.of_member(member, msg.product_id)
            orders = [o.view(fills=False) for o in found]
        self.send({"type": "response", "id": msg.id, "result": {"seq": md.seq, "orders": orders}})

    def _order_status(self, msg: Any, member: MemberId) -> None:
        o = self.md.order_status.get(member, msg.order_id, msg.client_order_id)
        if o is None:  # unknown, forgotten, or another member's: the same answer (nothing leaks)
            named = f"order {msg.order_id}" if msg.order_id is not None \
                else f"client_order_id {msg.client_order_id!r}"
            self.error(msg.id, "UNKNOWN_ORDER", f"no order of yours with {named} (orders are known until their "
                       "product is delivered; closed ones: your most recent)")
            return
        self.send({"type": "response", "id": msg.id, "result": o.view()})

    def _dead_man(self, msg: Any, member: MemberId) -> None:
        if self.dead_man is not None:
            self.dead_man.cancel()
            self.dead_man = None
        expires = None
        if msg.timeout_s > 0:
            self.dead_man = asyncio.get_running_loop().call_later(msg.timeout_s, self._dead_man_fired, member)
            expires = iso_dt(datetime.now(UTC) + timedelta(seconds=msg.timeout_s))
        self.send({"type": "response", "id": msg.id,
                   "result": {"armed": self.dead_man is not None, "timeout_s": msg.timeout_s, "expires_at": expires}})

    def _dead_man_fired(self, member: MemberId) -> None:
        self.dead_man = None
        log.warning("dead man's switch of %s ran out: cancelling its orders", member)
        self.send({"type": "dead_man_triggered", "ts": iso_dt(datetime.now(UTC))})
        self._cancel_everything(member)

    def _cancel_everything(self, member: MemberId) -> None:
        try:
            self.market.runtime.enqueue(CancelAllCmd(0, member, None))
        except (MarketBusy, MarketUnavailable) as exc:
            log.error("could not cancel the orders of %s: %s", member, exc)

    def _replay(self, msg: Any, member: MemberId) -> None:
        stream = self.md.publisher.stream
        reports = stream.since(member, msg.from_pseq)
        if reports is None:
            self.error(msg.id, "REPLAY_UNAVAILABLE",
                       f"reports before pseq {msg.from_pseq} are no longer kept (the last {stream.window}): "
                       "ask for `orders` and `positions`, then follow the stream")
            return
        for data in reports:
            self.send_raw(data)
        self.send({"type": "response", "id": msg.id,
                   "result": {"replayed": len(reports), "pseq": stream.pseq.get(member, 0)}})

    def _login(self, msg) -> None:
        if self.member is not None:
            self.error(msg.id, "ALREADY_AUTHENTICATED", f"this session is bound to {self.member} (signed in by "
                       f"{self.auth})")
            return
        if msg.message is not None:
            self._login_siwe(msg)
            return
        # DEPRECATED (one more version): the signature of the hello's challenge, with the address
        try:
            signer = auth.recover_login(self.challenge, msg.signature) if self.challenge else None
        except ValueError as exc:
            signer, why = None, str(exc)
        else:
            why = "the signature is not by that address" if self.challenge else "the challenge was used"
        claimed = auth.checksum(msg.address)
        if signer != claimed:
            self._login_failed(msg.id, "BAD_SIGNATURE", f"login refused: {why}")
            return
        self._bind_login(msg.id, claimed, "challenge")

    def _login_siwe(self, msg) -> None:
        """A Sign-In with Ethereum login: the message parses, is for this connection's domain,
        chain and nonce, in time, and is signed by its address (docs/websocket.md)."""
        offer = self.siwe
        try:
            m = siwe.parse(msg.message)
        except siwe.SiweError as exc:
            self._login_failed(msg.id, siwe.SIWE_INVALID, f"login refused: not an EIP-4361 message: {exc}")
            return
        if msg.address is not None and auth.checksum(msg.address) != m.address:
            self._login_failed(msg.id, siwe.SIWE_INVALID, f"login refused: address {msg.address} is not the "
                               f"message's ({m.address})")
            return
        now = datetime.now(UTC)
        try:
            if offer is None and self.siwe_refused is not None:
                raise VoltbourseError(siwe.SIWE_WRONG_DOMAIN, self.siwe_refused)
            if offer is None:
                raise VoltbourseError(siwe.SIWE_NONCE_USED, "this connection's nonce was used")
            siwe.check(m, domain=offer["domain"], chain_id=self.settings.chain_id, now=now, scheme=self.scheme,
                       path=self.siwe_path)
            if m.nonce != offer["nonce"]:
                raise VoltbourseError(siwe.SIWE_NONCE_UNKNOWN, "the message's nonce is not the one this connection "
                                      "offered (hello.siwe.nonce)")
            if now >= self.siwe_expires:
                raise VoltbourseError(siwe.SIWE_EXPIRED, f"this connection's nonce expired at "
                                      f"{offer['expiration_time']}: reconnect for a new one")
        except VoltbourseError as exc:
            self._login_failed(msg.id, exc.code, f"login refused: {exc.message}")
            return
        try:
            signer = auth.recover_login(msg.message, msg.signature)
        except ValueError as exc:
            self._login_failed(msg.id, "BAD_SIGNATURE", f"login refused: {exc}")
            return
        if signer != m.address:
            self._login_failed(msg.id, "BAD_SIGNATURE", f"login refused: the message is signed by {signer}, not by "
                               f"{m.address}")
            return
        self._bind_login(msg.id, m.address, "siwe")

    def _login_failed(self, request_id: Any, code: str, message: str) -> None:
        self.login_failures += 1
        self.error(request_id, code, message)
        if self.login_failures >= MAX_LOGIN_ATTEMPTS:
            self.close(WSCloseCode.POLICY_VIOLATION, "too many failed logins", flush=True)

    def _bind_login(self, request_id: Any, member: str, how: str) -> None:
        refused = member_refusal(self.market, self.md, self.settings, member)
        if refused is not None:
            self.error(request_id, refused.code, refused.message)
            return
        self._bind(member, how)
        stream = self.md.publisher.stream
        self.send({"type": "response", "id": request_id, "result": {
            "member": member, "market_id": self.settings.market_id, "auth": how,
            "pseq": stream.pseq.get(member, 0), "pstream": stream.run_id}})

    def _bind(self, member: str, how: str, ref: str = "") -> None:
        self.member = MemberId(member)
        self.auth, self.auth_ref = how, ref
        self.challenge = ""  # single use, and so is the SIWE nonce
        self.siwe = None
        self._cancel_login_timer()
        self.md.attach(self)
        if self.on_login is not None:
            self.on_login()

    def sign_in(self, peer: PeerAuth) -> VoltbourseError | None:
        """Bind the connection to ``peer`` (signed in by its upgrade request) before the hello;
        the refusal (unknown or suspended member, too many sessions) if it cannot be."""
        refused = member_refusal(self.market, self.md, self.settings, peer.member)
        if refused is None:
            self._bind(peer.member, peer.via, peer.ref)
        return refused

    def _place(self, msg: Any, member: MemberId, t0: int) -> None:
        expire_at = to_us(msg.expire_time) if msg.expire_time is not None else None
        if msg.signature is not None:
            typed = auth.order_typed_data(self.settings.market_id, self.settings.chain_id, product_id=msg.product_id,
                                          side=msg.side, price=msg.price, quantity=msg.quantity, tif=msg.tif,
                                          client_order_id=msg.client_order_id, nonce=msg.nonce,
                                          post_only=msg.post_only, min_quantity=msg.min_quantity,
                                          expire_time=None if expire_at is None else expire_at // 1_000_000)
            if not self._signed_by(typed, msg, member):
                return
        cmd = PlaceOrder(0, member, msg.product_id, _SIDES[msg.side], msg.price, msg.quantity, _TIFS[msg.tif],
                         msg.client_order_id, msg.signature, msg.nonce, msg.post_only, expire_at, msg.min_quantity)
        self._submit(cmd, msg.id, "place", t0)

    def _place_block(self, msg: Any, member: MemberId, t0: int) -> None:
        if msg.signature is not None:
            typed = auth.block_order_typed_data(self.settings.market_id, self.settings.chain_id,
                                                product_ids=msg.product_ids, side=msg.side, price=msg.price,
                                                quantity=msg.quantity, client_order_id=msg.client_order_id,
                                                nonce=msg.nonce)
            if not self._signed_by(typed, msg, member):
                return
        cmd = PlaceBlockCmd(0, member, [ProductId(p) for p in msg.product_ids], _SIDES[msg.side], msg.price,
                            msg.quantity, msg.client_order_id, msg.signature, msg.nonce)
        self._submit(cmd, msg.id, "place_block", t0)

    def _signed_by(self, typed: auth.TypedData, msg: Any, member: MemberId) -> bool:
        """Whether ``msg``'s signature of ``typed`` is ``member``'s (else answered BAD_SIGNATURE)."""
        try:
            signer = auth.recover_order_signer(typed, msg.signature)
        except ValueError as exc:
            self.error(msg.id, "BAD_SIGNATURE", str(exc))
            return False
        if signer != member:
            self.error(msg.id, "BAD_SIGNATURE", f"the order is signed by {signer}, not by {member}")
            return False
        return True

    def _submit(self, cmd, request_id, kind: str, t0: int) -> None:
        self.market.runtime.enqueue(cmd, Pending(self, request_id, kind, t0))

    async def _trades(self, msg: Any, member: str) -> None:
        rows = await self.market.trades.of_member(member, msg.after, msg.product_id, msg.limit)
        out = []
        for r in rows:
            side = "buy" if r["buyer"] == member else "sell"
            out.append({"trade_id": r["trade_id"], "seq": r["seq"], "product_id": r["product_id"], "side": side,
                        "price": r["price_ticks"], "quantity": r["energy_wh"], "ts": iso_dt(r["ts"]),
                        "counterparty": (r["seller"] if side == "buy" else r["buyer"])
                        if self.settings.disclose_counterparty else None})
        self.send({"type": "response", "id": msg.id, "result": {"trades": out}})

    async def _positions(self, msg: Any, member: str) -> None:
        # committed positions, in memory (exchange.gateway.positions): no database round trip;
        # by default only products not delivered yet, so the answer does not grow with history
        states = self.md.product_states
        out = []
        for p in self.md.positions.of(member, msg.product_id, msg.after_product):
            state = states.get(str(p["product_id"]))
            if not msg.delivered and state in (None, "delivered"):
                continue
            out.append({**p, "state": state})
            if len(out) >= msg.limit:
                break
        self.send({"type": "response", "id": msg.id, "result": {"positions": out}})

    def _subscribe(self, msg) -> None:
        md = self.md
        if msg.product_id is not None and msg.product_id not in md.product_states:
            self.error(msg.id, "UNKNOWN_PRODUCT", f"no product {msg.product_id}")
            return
        if msg.channel == "book":
            replay = None
            if msg.from_seq is not None:
                current = md.mirror.book(msg.product_id).seq or 0
                replay = md.publisher.book_since(msg.product_id, msg.from_seq, current)
            if msg.depth is None:
                md.book_subs[msg.product_id].add(self)
                md.top_subs[msg.product_id].pop(self, None)
            else:
                md.top_subs[msg.product_id][self] = msg.depth
                md.book_subs[msg.product_id].discard(self)
            result: dict[str, Any] = {"channel": "book", "product_id": msg.product_id, "depth": msg.depth}
            if msg.from_seq is not None:
                result["replayed"] = None if replay is None else len(replay)
            self.send({"type": "response", "id": msg.id, "result": result})
            if replay is None:
                self.send(md.snapshot(msg.product_id, msg.depth))
            else:  # the deltas since the client's seq, then live ones: no snapshot
                for data in replay:
                    self.send_raw(data)
        elif msg.channel == "trades":
            md.trade_subs[msg.product_id].add(self)
            self.send({"type": "response", "id": msg.id, "result": {"channel": "trades", "product_id": msg.product_id}})
        else:
            md.product_subs.add(self)
            self.send({"type": "response", "id": msg.id, "result": {
                "channel": "products", "seq": md.seq, "halted": md.halted[0], "products": md.products_view()}})

    def _unsubscribe(self, msg) -> None:
        md = self.md
        if msg.channel == "book":
            md.book_subs.get(msg.product_id, set()).discard(self)
            md.top_subs.get(msg.product_id, {}).pop(self, None)
        elif msg.channel == "trades":
            md.trade_subs.get(msg.product_id, set()).discard(self)
        else:
            md.product_subs.discard(self)
        self.send({"type": "response", "id": msg.id, "result": {"channel": msg.channel, "product_id": msg.product_id,
                                                                  "subscribed": False}})


def member_refusal(market: Market, md: MarketData, settings: Settings, member: str, *,
                   count_sessions: bool = True) -> VoltbourseError | None:
    """Why ``member`` may not sign in now (an unknown or suspended member; with
    ``count_sessions``, too many WebSocket sessions open), or None. The engine's accounts are
    the members (the operator registry's rows are reconciled into them at start)."""
    acct = market.engine.accounts.get(MemberId(member))
    if acct is None:
        return VoltbourseError("UNKNOWN_MEMBER", f"{member} is not a registered member of {settings.market_id}")
    if acct.suspended or member in md.mirror.suspended:
        return VoltbourseError("MEMBER_SUSPENDED", f"{member} is suspended")
    if count_sessions and len(md.peers.sessions(member)) >= settings.ws_sessions_per_member:
        return VoltbourseError("TOO_MANY_SESSIONS",
                               f"{member} has {settings.ws_sessions_per_member} sessions open (the most allowed)")
    return None


async def _signed_in_by(request: web.Request) -> PeerAuth | None:
    """The first peer authenticator's answer for this upgrade request (app[PEER_AUTHENTICATORS])."""
    for authenticate in request.app.get(PEER_AUTHENTICATORS, ()):
        try:
            peer = await authenticate(request)
        except Exception:  # noqa: BLE001 - a failing authenticator leaves the normal login
            log.exception("peer authenticator %r failed", authenticate)
            continue
        if peer is not None:
            return peer
    return None


def end_peer_sessions(app: web.Application, member: str, via: str, refs: set[str] | None = None,
                      reason: str = "signed out") -> int:
    """Close ``member``'s connections signed in by ``via`` (a PeerAuth's) and, unless ``refs``
    is None, one of ``refs``: an error frame ``SIGNED_OUT`` then close code 4401. How many."""
    n = 0
    for s in app[MARKET_DATA].peers.sessions(member):
        if getattr(s, "auth", None) == via and (refs is None or getattr(s, "auth_ref", "") in refs):
            s.error(None, "SIGNED_OUT", f"{reason}: this connection ends")
            s.close(SIGNED_OUT, reason, flush=True)
            n += 1
    return n


async def ws_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    limits = app[LIMITS].counts
    ip = request.remote or "?"
    if limits.per_ip.get(ip, 0) >= settings.ws_connections_per_ip:
        return web.json_response({"error": "RATE_LIMITED", "message": f"more than {settings.ws_connections_per_ip} "
                                  "WebSocket connections from this address"}, status=429)
    if limits.anonymous >= settings.ws_anonymous_max:
        return web.json_response({"error": "BUSY", "message": "too many connections waiting to log in; retry "
                                  "shortly"}, status=503, headers={"Retry-After": "5"})
    # The heartbeat is the session's own (Session._heartbeat: it closes with a close frame, 4008);
    # autoping off lets it see the pongs, so pings are answered below.
    peer = await _signed_in_by(request)
    ws = web.WebSocketResponse(autoping=False, max_msg_size=settings.ws_max_message_bytes,
                               timeout=2.0)  # close handshake: do not hold a socket for long
    writer = await ws.prepare(request)
    app[SOCKETS].add(ws)
    metrics = app.get(METRICS)
    limits.opened(ip)
    try:  # the host a sign-in names: PUBLIC_ORIGIN's, never a Host header of the caller's choosing
        siwe_host, secure = sign_in_host(request)
        siwe_refused = None
    except VoltbourseError as exc:
        siwe_host, secure, siwe_refused = request.host, request.secure, exc.message
    session = Session(ws, app[MARKET], app[MARKET_DATA], settings, metrics, app.get(WS_REQUESTS),
                      app.get(PROTOCOL), app, host=siwe_host, secure=secure,
                      path=app.get(BASE_PATH, "") + "/ws",
                      frames=FrameWriter(ws, request.transport, writer.drain), siwe_refused=siwe_refused)
    anonymous = [True]

    def logged_in() -> None:
        anonymous[0] = False
        limits.anonymous -= 1

    session.on_login = logged_in
    if metrics is not None:
        metrics.peer_connected()
    refused = session.sign_in(peer) if peer is not None else None
    hello: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION, "market_id": settings.market_id,
                             "challenge": session.challenge, "server_time": iso_dt(datetime.now(UTC)),
                             "market_time": iso(app[MARKET].runtime.clock.now_us()),
                             "eip712_domain": auth.domain(settings.chain_id)}
    if session.member is not None:
        stream = session.md.publisher.stream
        hello.update(member=session.member, auth=session.auth, pseq=stream.pseq.get(session.member, 0),
                     pstream=stream.run_id)
    else:
        hello["siwe"] = session.siwe
    session.send(hello)
    if refused is not None:  # signed in by the request, but that member may not trade now: log in instead
        session.error(None, refused.code, f"not signed in by the {peer.via if peer else ''} session: "
                                          f"{refused.message}")
    try:
        async for m in ws:
            if session.closed:
                break
            session.alive = True
            if m.type == WSMsgType.TEXT:
                session.busy = True
                try:
                    await session.handle(m.data)
                finally:
                    session.busy = False
            elif m.type == WSMsgType.PING:
                try:
                    await ws.pong(m.data)
                except (ConnectionError, RuntimeError):
                    break
            elif m.type == WSMsgType.PONG:
                pass
            elif m.type == WSMsgType.BINARY:
                session.error(None, "BINARY_NOT_SUPPORTED", "send JSON text frames")
            elif m.type == WSMsgType.ERROR:
                break
    finally:
        app[SOCKETS].discard(ws)
        limits.closed(ip, anonymous[0])
        await session.finish()
        if metrics is not None:
            metrics.peer_disconnected()
    return ws


async def close_sockets(app: web.Application) -> None:
    """On shutdown: tell every peer (1001 going away) instead of waiting for them to leave.
    A server shutting down does not trigger cancel_on_disconnect: orders survive a restart."""
    if LIMITS in app:
        app[LIMITS].stopping = True
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                           for ws in list(sockets)), return_exceptions=True)
