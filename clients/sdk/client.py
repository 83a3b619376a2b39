"""Asyncio client of the Voltbourse peer WebSocket API (docs/websocket.md).

::

    from clients.sdk import VoltbourseClient

    async with VoltbourseClient("ws://127.0.0.1:8080/ws", private_key) as c:
        reports = c.executions()                       # private stream, start it before trading
        r = await c.place("20261122T1100Z-60", "buy", price=8550, quantity=2500,
                          client_order_id=c.new_client_order_id())
        print(r.order_id, r.status, r.fills)
        async for ex in reports:                       # Execution models
            print(ex.exec, ex.quantity, ex.price)

What it does
------------
* **Login**: answers the server's ``hello`` with a Sign-In with Ethereum (EIP-4361)
  message signed with EIP-191 (:func:`clients.sdk.wire.login`).
* **Requests** return when the exchange answers (for orders: after the journal
  commit). Each is built by :mod:`clients.sdk.wire` from the server's own pydantic
  model (:mod:`exchange.protocol.messages`), so a malformed request fails locally
  (``pydantic.ValidationError``) before it is sent. An error response raises a
  :class:`~clients.sdk.errors.RequestError` subclass carrying the ``code``.
* **Signed orders** (``sign_orders=True``): each ``place`` carries an EIP-712
  signature (:class:`clients.sdk.wire.OrderSigner`) and a nonce that only
  grows (microseconds since the epoch, or last + 1), so it stays above the
  member's last nonce across restarts of the client.
* **Streams**: :meth:`executions` (private reports), :meth:`subscribe_book`
  (a local book from a snapshot + ``seq``/``prev_seq`` deltas; on a gap it
  re-subscribes by itself from the seq it holds and applies the deltas the server
  replays, or a fresh snapshot when they are no longer kept), :meth:`subscribe_trades`,
  :meth:`subscribe_products`.
* **Reconnection**: when the socket drops, requests in flight fail at once with
  :class:`~clients.sdk.errors.ConnectionLost` (never silently resent: an order may
  have been accepted before the drop). The client reconnects in the background
  with exponential back-off and jitter, logs in again, re-subscribes every
  stream (book feeds resume from their seq: the deltas missed are replayed, or a
  fresh snapshot follows) and calls the ``on_connect`` hooks.
  New requests wait for the connection (up to their timeout).

Retrying orders safely
----------------------
Give a ``client_order_id`` (:meth:`new_client_order_id` makes one). Sending the
same id again never creates a second order: the exchange answers with the
original outcome (``OrderResult.duplicate is True``, same ``order_id``), even
after a restart of the exchange. ``place(..., client_order_id=..., retries=N)``
does exactly that on :class:`ConnectionLost` / :class:`RequestTimeout`. Without a
client order id, look the order up (:meth:`orders`, :meth:`my_trades`) before
placing it again. Execution reports sent while the connection was down are kept by
the server (a member's last 256, while it runs) and sent again on a ``replay`` request,
which this client does not send by itself (``request({"type": "replay", "from_pseq": ...})``
in an ``on_connect`` hook, docs/sdk.md); or, as the bots do, reconcile after a
reconnection with :meth:`orders` and :meth:`my_trades` (``after`` = the last ``seq`` you
processed), which also covers a restart of the exchange.

Extension points (for ``clients/sdk/proofs.py``, ``clients/sdk/flex.py``, ...)
-----------------------------------------------------------------------------
Other modules add message types without editing this file:

* ``await client.request({"type": "trade_proof", "trade_id": 7})`` sends any
  message (the ``id`` is added), waits for its answer and returns the
  ``result`` (a dict or list), raising the typed error on an ``error`` answer.
  ``timeout=`` and ``wait_connected=`` as for every request.
* ``client.on("flex_invitation", callback)`` calls ``callback(msg: dict)`` (a
  plain function or a coroutine function) for every unsolicited server message of
  that ``type`` (``"*"``: every one); returns a function that removes it.
* ``client.messages("flex_invitation", "flex_dispatch")`` is an async iterator
  (:class:`Feed`) of those messages as dicts.
* ``client.on_connect(callback)`` runs ``callback(client)`` after every login,
  including re-logins after a reconnection (re-subscribe extension channels there).
* ``client.member``, ``client.hello`` (the server's ``Hello``, with the market id
  and the EIP-712 domain), ``client.account`` (the eth-account ``LocalAccount``)
  for modules that sign their own payloads.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal, overload

import aiohttp
from eth_account.signers.local import LocalAccount

from clients.sdk import wire
from clients.sdk.book import BookGap, BookUpdate, LocalBook
from clients.sdk.errors import (
    AuthenticationError,
    ClientClosed,
    ConnectionLost,
    OutcomeUnknown,
    RequestError,
    RequestTimeout,
)
from clients.sdk.models import (
    BlockResult,
    BookDelta,
    BookSnapshot,
    CancelAllResult,
    CancelResult,
    Execution,
    Hello,
    LoginResult,
    MarketState,
    MyTrade,
    OpenOrder,
    OrderResult,
    OrderState,
    Position,
    ProductsResult,
    ProductState,
    PublicTrade,
    VolatilityInterruption,
)

__all__ = ["BookFeed", "Feed", "VoltbourseClient"]

log = logging.getLogger(__name__)

_END = object()


class Feed:
    """An async iterator over messages pushed by the server (``async for x in feed``).

    Items are queued from the moment the feed is created; ``maxsize`` bounds the
    queue (0: unbounded) and drops the oldest item when full (``dropped`` counts them).
    Iteration ends when the feed or the client is closed. Use as an async context
    manager (or call :meth:`close`) to stop it.
    """

    def __init__(self, client: VoltbourseClient, types: Iterable[str], maxsize: int = 0,
                 parse: Callable[[dict], Any] | None = None, accept: Callable[[dict], bool] | None = None) -> None:
        self._client = client
        self.types = tuple(types)
        self._parse = parse
        self._accept = accept
        self._items: deque = deque(maxlen=maxsize or None)
        self._waiter: asyncio.Future | None = None
        self.closed = False
        self.dropped = 0
        client._feeds.add(self)

    def _push(self, item: Any) -> None:
        if self.closed:
            return
        if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _deliver(self, msg: dict) -> None:
        if self._accept is not None and not self._accept(msg):
            return
        self._push(self._parse(msg) if self._parse is not None else msg)

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if item is _END:
            self.closed = True
            raise StopAsyncIteration
        return item

    async def get(self, timeout: float | None = None) -> Any:
        """The next item (``asyncio.TimeoutError`` after ``timeout`` s; ``StopAsyncIteration`` at the end)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def pending(self) -> int:
        return len(self._items)

    def _end(self) -> None:
        if not self.closed:
            self._push(_END)

    async def close(self) -> None:
        self._end()
        self.closed = True
        self._client._feeds.discard(self)

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class BookFeed(Feed):
    """A subscription to one product's book: yields :class:`~clients.sdk.book.BookUpdate`
    (first a snapshot, then one per delta). ``book`` is the local
    :class:`~clients.sdk.book.LocalBook`, always current (``book.synced``) but while a resync
    is under way.

    **Resync.** On a gap (a delta whose ``prev_seq`` is not the seq held) or after a
    reconnection the feed subscribes again with ``from_seq`` = the seq of the book it holds:
    the server replays the deltas since (updates with ``replayed=True``, checked to chain
    from that seq) when it still keeps them (the last 256 per product), else it sends a
    snapshot (an update with ``resync=True``). Counters: ``gaps`` (resyncs caused by a missed
    delta), ``replays`` (resyncs done by replay, no snapshot), ``snapshots`` (snapshots
    applied, the first one included)."""

    def __init__(self, client: VoltbourseClient, product_id: str, maxsize: int = 0) -> None:
        super().__init__(client, (), maxsize)
        self.product_id = product_id
        self.book = LocalBook(product_id)
        self.gaps = 0
        self.replays = 0
        self.snapshots = 0
        self._resync_next = False
        self._resyncing: asyncio.Task | None = None
        self._awaiting: wire.RequestId | None = None  # the subscription whose answer is awaited
        self._replaying = 0  # replayed deltas announced and not arrived yet

    def _subscribe_msg(self) -> dict:
        """The next subscription: from the book held (a replay), else plain (a snapshot). Deltas
        are dropped until its answer: the replay or the snapshot after it includes them."""
        c = self._client
        msg = wire.subscribe(c._next_id(), "book", self.product_id, from_seq=self.book.held_seq)
        self._awaiting = msg["id"]
        self._replaying = 0
        return msg

    def _on_answer(self, request: dict, result: Any) -> None:
        """The answer to one of this feed's subscriptions (called in order with the stream)."""
        if request.get("id") != self._awaiting:
            return  # an earlier subscription's, superseded
        self._awaiting = None
        if request.get("from_seq") is None or not isinstance(result, dict):
            return  # a snapshot follows (or the subscription failed: the book stays unsynced)
        n = result.get("replayed")
        if n is None:
            log.info("book %s: the deltas since %s are no longer kept: a snapshot follows", self.product_id,
                     request["from_seq"])
            return
        self.book.resume()
        self.replays += 1
        self._replaying = int(n)

    def _on_snapshot(self, snap: BookSnapshot) -> None:
        self.book.reset(snap)
        self.snapshots += 1
        self._replaying = 0
        self._push(BookUpdate(self.product_id, self.book, snap.seq, None, self._resync_next))
        self._resync_next = False

    def _on_delta(self, delta: BookDelta) -> None:
        if self._awaiting is not None:
            return  # resyncing: what the answer announces (a replay or a snapshot) includes it
        replayed = self._replaying > 0
        if replayed:
            self._replaying -= 1
        try:
            if self.book.follow(delta):
                self._push(BookUpdate(self.product_id, self.book, delta.seq, delta, replayed=replayed))
                if replayed and not self._replaying:
                    self._resync_next = False
        except BookGap as exc:
            self.gaps += 1
            log.info("book gap (%s): resyncing from seq %s", exc, self.book.held_seq)
            self._start_resync()

    def _start_resync(self) -> None:
        self.book.invalidate()
        self._resync_next = True
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        c = self._client
        try:
            # not waiting for a connection: a reconnection subscribes again by itself
            await c._call(self._subscribe_msg(), wait_connected=False)
        except (OutcomeUnknown, ClientClosed):
            pass  # a reconnection re-subscribes anyway
        except RequestError as exc:  # e.g. the product is gone
            log.warning("book resync of %s failed: %s", self.product_id, exc)

    async def close(self) -> None:
        if self.closed:
            return
        await super().close()
        c = self._client
        if c._book_feeds.get(self.product_id) is self:
            del c._book_feeds[self.product_id]
            if c.connected:
                try:
                    await c._call(wire.unsubscribe(c._next_id(), "book", self.product_id), timeout=5)
                except (OutcomeUnknown, RequestError, ClientClosed):
                    pass


class VoltbourseClient:
    """One member's connection to the exchange (see the module docstring).

    :param url: ``ws://host:port/ws``
    :param private_key: the member's key (hex string, bytes, or an eth-account ``LocalAccount``)
    :param sign_orders: sign every ``place`` with EIP-712 (nonce handled by the client)
    :param request_timeout: seconds to wait for an answer (``RequestTimeout`` after)
    :param reconnect: reconnect automatically after a drop
    :param backoff_initial, backoff_max: exponential back-off bounds (seconds); each delay
        is drawn uniformly from [d/2, d] (jitter) with d = min(max, initial * 2**attempt)
    :param session: an ``aiohttp.ClientSession`` to share between many clients (its connector
        should have ``limit=0``); by default the client owns one
    """

    def __init__(self, url: str, private_key: LocalAccount | str | bytes, *, sign_orders: bool = False,
                 request_timeout: float = 10.0, reconnect: bool = True, backoff_initial: float = 0.2,
                 backoff_max: float = 10.0, connect_timeout: float = 10.0, heartbeat: float | None = 20.0,
                 session: aiohttp.ClientSession | None = None, nonce_start: int | None = None) -> None:
        self.url = url
        self.account = wire.account(private_key)
        self.address: str = self.account.address
        self.sign_orders = sign_orders
        self.request_timeout = request_timeout
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self._own_session = session is None
        self._http = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._pending: dict[wire.RequestId, tuple[asyncio.Future, dict]] = {}
        self._connected = asyncio.Event()
        self._closing = False
        self._fatal: BaseException | None = None
        self._nonces = wire.Nonces(nonce_start)
        self._callbacks: dict[str, list[Callable]] = {}
        self._connect_hooks: list[Callable] = []
        self._feeds: set[Feed] = set()
        self._exec_feeds: list[Feed] = []
        self._book_feeds: dict[str, BookFeed] = {}
        self._trade_subs: set[str | None] = set()  # product ids (None: all)
        self._products_sub = False
        #: test hook: a callable given each incoming message dict; returning True drops it
        self.drop_filter: Callable[[dict], bool] | None = None
        self.hello: Hello | None = None
        self.member: str | None = None
        self.market_id: str | None = None
        #: product_id -> state, kept current once :meth:`subscribe_products` was called
        self.product_states: dict[str, str] = {}
        self.halted = False
        self.connects = 0  # successful logins (1 + reconnections)
        self.disconnects = 0
        self._coid_prefix = secrets.token_hex(4)
        self._coid_counter = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> VoltbourseClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and log in (raises on failure); then keep the connection up."""
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            await self._connect_once()
        except BaseException:
            await self.close()
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._connected.clear()
        tasks = [t for t in (self._supervisor, self._reader) if t is not None and t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if self._ws is not None:
            try:
                async with asyncio.timeout(2):
                    await self._ws.close()
            except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_pending(ClientClosed("the client was closed"))
        for f in list(self._feeds):
            f._end()
        if self._own_session and self._http is not None:
            await self._http.close()

    async def _connect_once(self) -> None:
        """Open the socket, read ``hello``, log in, re-subscribe, run the connect hooks."""
        assert self._http is not None
        async with asyncio.timeout(self.connect_timeout):
            ws = await self._http.ws_connect(self.url, heartbeat=self.heartbeat, max_msg_size=0)
        try:
            hello = wire.read_hello(await ws.receive_json(timeout=self.connect_timeout))
            self._ws, self.hello, self.market_id = ws, hello, hello.market_id
            self._reader = asyncio.get_running_loop().create_task(self._read(ws))
            login = wire.login(self._next_id(), hello, self.account)
            try:
                result = LoginResult.model_validate(await self._call(login, wait_connected=False))
            except AuthenticationError as exc:
                self._fatal = exc
                raise
            self.member = result.member
            # re-subscribe every stream; a book held resumes from its seq (the deltas missed
            # are replayed, or a fresh snapshot follows when the server no longer keeps them)
            for feed in list(self._book_feeds.values()):
                feed.book.invalidate()
                feed._resync_next = self.connects > 0
                await self._call(feed._subscribe_msg(), wait_connected=False)
            for trades_of in self._trade_subs:
                await self._call(wire.subscribe(self._next_id(), "trades", trades_of), wait_connected=False)
            if self._products_sub:
                self._on_products(await self._call(wire.subscribe(self._next_id(), "products"),
                                                   wait_connected=False))
        except BaseException:
            if self._reader is not None:
                self._reader.cancel()
            await ws.close()
            raise
        self.connects += 1
        self._connected.set()
        for hook in list(self._connect_hooks):
            try:
                r = hook(self)
                if inspect.isawaitable(r):
                    await r
            except Exception:
                log.exception("on_connect hook failed")

    async def _supervise(self) -> None:
        while not self._closing:
            reader = self._reader
            if reader is not None:
                await asyncio.gather(reader, return_exceptions=True)
            if self._closing:
                return
            self._connected.clear()
            self.disconnects += 1
            self._fail_pending(ConnectionLost("the connection to the exchange was lost; the request may or may "
                                              "not have been executed"))
            for feed in self._book_feeds.values():
                feed.book.invalidate()
            if not self.reconnect:
                self._fatal = ConnectionLost("connection lost (reconnect disabled)")
                for f in list(self._feeds):
                    f._end()
                return
            attempt = 0
            while not self._closing:
                d = min(self.backoff_max, self.backoff_initial * 2 ** attempt)
                await asyncio.sleep(random.uniform(d / 2, d))
                try:
                    await self._connect_once()
                    log.info("%s reconnected (attempt %d)", self.address, attempt + 1)
                    break
                except AuthenticationError as exc:
                    log.error("%s: login refused on reconnection, giving up: %s", self.address, exc)
                    self._fail_pending(ClientClosed(f"login refused: {exc}"))
                    for f in list(self._feeds):
                        f._end()
                    return
                except (TimeoutError, aiohttp.ClientError, OSError, OutcomeUnknown, RequestError, ValueError) as exc:
                    attempt += 1
                    log.debug("%s: reconnect attempt %d failed: %r", self.address, attempt, exc)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for m in ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    try:
                        msg = wire.decode(m.data)
                    except ValueError:  # orjson.JSONDecodeError included
                        log.warning("unreadable frame from the server: %.200s", m.data)
                        continue
                    if self.drop_filter is not None and self.drop_filter(msg):
                        continue
                    try:
                        self._dispatch(msg)
                    except Exception:
                        log.exception("handling %.200s", m.data)
                elif m.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
        finally:
            self._connected.clear()
            # fail what is in flight on this socket at once (the supervisor reconnects)
            if not self._closing:
                self._fail_pending(ConnectionLost("the connection to the exchange was lost; the request may or "
                                                  "may not have been executed"))

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut, req in pending.values():
            if not fut.done():
                e = type(exc)(str(exc), req) if isinstance(exc, OutcomeUnknown) else exc
                fut.set_exception(e)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, msg: dict) -> None:
        t: str = msg.get("type") or ""
        if wire.is_answer(msg):
            rid = wire.answer_id(msg)
            entry = self._pending.pop(rid, None) if rid is not None else None
            if entry is not None:
                fut, req = entry
                if req.get("type") == "subscribe" and req.get("channel") == "book":
                    # here, in order with the stream: the replayed deltas come right after it
                    feed = self._book_feeds.get(req.get("product_id") or "")
                    if feed is not None:
                        feed._on_answer(req, msg.get("result") if t == "response" else None)
                if not fut.done():
                    try:
                        fut.set_result(wire.result_of(msg, req))
                    except RequestError as exc:
                        fut.set_exception(exc)
                return
            if t == "error":
                log.warning("unsolicited error from the server: %s", msg)
        elif t == "execution":
            if self._exec_feeds:
                ex = Execution.model_validate(msg)
                for f in self._exec_feeds:
                    f._push(ex)
        elif t == "book" or t == "book_snapshot":
            feed = self._book_feeds.get(msg.get("product_id") or "")
            if feed is not None:
                if t == "book":
                    feed._on_delta(BookDelta.model_validate(msg))
                else:
                    feed._on_snapshot(BookSnapshot.model_validate(msg))
        elif t == "product_state":
            self.product_states[msg["product_id"]] = msg["state"]
        elif t == "market_state":
            self.halted = bool(msg.get("halted"))
        for f in self._feeds:
            if t in f.types or "*" in f.types:
                f._deliver(msg)
        for key in (t, "*"):
            for cb in self._callbacks.get(key, ()):
                try:
                    r = cb(msg)
                    if inspect.isawaitable(r):
                        asyncio.ensure_future(r)
                except Exception:
                    log.exception("callback for %r failed", t)

    # ------------------------------------------------------------------ requests
    def _next_id(self) -> int:
        return next(self._ids)

    async def _call(self, msg: dict, timeout: float | None = None, wait_connected: bool = True) -> Any:
        if self._fatal is not None and not self._connected.is_set():
            raise ClientClosed(f"the client stopped: {self._fatal}")
        if self._closing:
            raise ClientClosed("the client is closed")
        timeout = self.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if wait_connected and not self._connected.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise ConnectionLost(f"not connected to the exchange within {timeout} s (nothing was sent)",
                                     msg) from None
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost("not connected to the exchange (nothing was sent)", msg)
        if "id" not in msg:
            msg["id"] = self._next_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg["id"]] = (fut, msg)
        try:
            await ws.send_str(wire.encode(msg))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self._pending.pop(msg["id"], None)
            raise ConnectionLost(f"sending failed: {exc!r}; the request may or may not have reached the exchange",
                                 msg) from None
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result when the
        # answer lands at the moment the caller is cancelled, swallowing the cancellation (a
        # bot asked to stop would loop on). A cancellation always propagates here.
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.shield(fut)
        except TimeoutError:
            self._pending.pop(msg["id"], None)
            raise RequestTimeout(f"no answer to {msg.get('type')} {msg['id']} within {timeout} s; it may or may "
                                 "not have been executed", msg) from None

    async def request(self, msg: dict, *, timeout: float | None = None, wait_connected: bool = True) -> Any:
        """Send any request (``id`` added) and return its ``result``; an ``error`` answer raises
        the matching :class:`RequestError`. The generic hook for extension modules."""
        msg = dict(msg)
        msg.pop("id", None)
        return await self._call(msg, timeout, wait_connected)

    # ------------------------------------------------------------------ orders
    def new_client_order_id(self, prefix: str = "sdk") -> str:
        """A fresh client order id, unique for this client object (``prefix-<random>-<n>``)."""
        return f"{prefix}-{self._coid_prefix}-{next(self._coid_counter)}"

    def next_nonce(self) -> int:
        """The next EIP-712 order nonce: last + 1, and (unless ``nonce_start`` was given) at least
        the current time in µs, so that a restarted client stays above the nonces it used before."""
        return self._nonces.next()

    @property
    def last_nonce(self) -> int:
        """The last EIP-712 order nonce given out (``nonce_start`` - 1, or 0, before the first)."""
        return self._nonces.last

    async def place(self, product_id: str, side: str, price: int, quantity: int, tif: str = "gtc", *,
                    client_order_id: str | None = None, sign: bool | None = None, retries: int = 0,
                    timeout: float | None = None, post_only: bool = False, expire_time: datetime | None = None,
                    min_quantity: int | None = None) -> OrderResult:
        """Place a limit order (price in ticks of 0.01 EUR/MWh, quantity in Wh). Conditions:
        ``post_only`` (gtc: refused rather than trade on arrival), ``expire_time`` (gtc: good
        till this aware time, whole seconds), ``min_quantity`` (ioc: trade only if that much can).

        Returns the :class:`OrderResult` after the order is durable. ``retries`` > 0 resends
        the same order after :class:`ConnectionLost`/:class:`RequestTimeout` (needs a
        ``client_order_id``: the exchange then answers the original outcome, never a second
        order); each resend waits for the reconnection."""
        if retries and client_order_id is None:
            raise ValueError("retries need a client_order_id (that is what makes a resend safe)")
        sign = self.sign_orders if sign is None else sign
        attempt = 0
        while True:
            signer = wire.OrderSigner(self.account, self._hello(), self._nonces) if sign else None
            msg = wire.place(self._next_id(), product_id, side, price, quantity, tif, client_order_id=client_order_id,
                             signer=signer, post_only=post_only, expire_time=expire_time, min_quantity=min_quantity)
            try:
                return wire.order_result(await self._call(msg, timeout), msg)
            except OutcomeUnknown:
                if attempt >= retries:
                    raise
                attempt += 1
                log.info("resending order %s after a lost answer (attempt %d)", client_order_id, attempt)

    async def place_block(self, product_ids: list[str], side: str, price: int, quantity: int, *,
                          client_order_id: str | None = None, sign: bool | None = None,
                          timeout: float | None = None) -> BlockResult:
        """A block order for the day-ahead auction: ``quantity`` Wh in each of the consecutive
        ``product_ids``, all or none, ``price`` a limit on their average clearing price. Answers
        ``status: pending``; the verdict comes as an ``execution`` report ``block_result`` (after
        the ``fill`` reports, if executed). Cancel it with :meth:`cancel` before the auction."""
        sign = self.sign_orders if sign is None else sign
        signer = wire.OrderSigner(self.account, self._hello(), self._nonces) if sign else None
        msg = wire.place_block(self._next_id(), product_ids, side, price, quantity, client_order_id=client_order_id,
                               signer=signer)
        return BlockResult.model_validate(await self._call(msg, timeout))

    async def cancel(self, order_id: int, *, timeout: float | None = None) -> CancelResult:
        return CancelResult.model_validate(await self._call(wire.cancel(self._next_id(), order_id), timeout))

    async def modify(self, order_id: int, *, price: int | None = None, quantity: int | None = None,
                     timeout: float | None = None) -> OrderResult:
        """New price and/or remaining quantity (quantity down at the same price keeps priority)."""
        msg = wire.modify(self._next_id(), order_id, price=price, quantity=quantity)
        return wire.order_result(await self._call(msg, timeout), msg)

    async def cancel_all(self, product_id: str | None = None, *, timeout: float | None = None) -> int:
        """Cancel my resting orders (of one product or all); returns how many."""
        r = await self._call(wire.cancel_all(self._next_id(), product_id), timeout)
        return CancelAllResult.model_validate(r).cancelled

    # ------------------------------------------------------------------ queries
    @overload
    async def orders(self, product_id: str | None = None, status: Literal["open"] = "open") -> list[OpenOrder]: ...

    @overload
    async def orders(self, product_id: str | None = None, *,
                     status: Literal["closed", "all"]) -> list[OrderState]: ...

    async def orders(self, product_id: str | None = None,
                     status: Literal["open", "closed", "all"] = "open") -> list[OpenOrder] | list[OrderState]:
        """My open orders (:class:`OpenOrder`); with ``status`` ``closed`` or ``all``, my closed
        (filled, cancelled, expired) or all orders as :class:`OrderState` (without fills)."""
        r = await self._call(wire.orders(self._next_id(), product_id, status))
        if status == "open":
            return [OpenOrder.model_validate(o) for o in r["orders"]]
        return [OrderState.model_validate(o) for o in r["orders"]]

    async def order_status(self, order_id: int | None = None, client_order_id: str | None = None) -> OrderState:
        """One of my orders, open or closed, by ``order_id`` or ``client_order_id`` (one of the two):
        status, remaining, filled, fills. Known until its product is delivered (closed ones: my
        most recent 1000); otherwise :class:`OrderRejected` with ``UNKNOWN_ORDER``."""
        r = await self._call(wire.order_status(self._next_id(), order_id, client_order_id))
        return OrderState.model_validate(r)

    async def my_trades(self, product_id: str | None = None, after: int = 0, limit: int = 100) -> list[MyTrade]:
        """My trades with ``seq`` > ``after`` (page with the last ``seq`` seen)."""
        r = await self._call(wire.trades(self._next_id(), product_id, after, limit))
        return [MyTrade.model_validate(t) for t in r["trades"]]

    async def all_my_trades(self, product_id: str | None = None) -> list[MyTrade]:
        out: list[MyTrade] = []
        after = 0
        while True:
            page = await self.my_trades(product_id, after=after, limit=1000)
            out.extend(page)
            if len(page) < 1000:
                return out
            after = page[-1].seq

    async def positions(self, product_id: str | None = None, *, delivered: bool = False,
                        after_product: str | None = None, limit: int | None = None) -> list[Position]:
        """My positions: the products not delivered yet; with ``delivered``, every product
        (a page of ``limit`` after ``after_product``, in product-id order)."""
        r = await self._call(wire.positions(self._next_id(), product_id, delivered=delivered,
                                            after_product=after_product, limit=limit))
        return [Position.model_validate(p) for p in r["positions"]]

    async def ping(self) -> dict:
        r: dict = await self._call(wire.ping(self._next_id()))
        return r

    # ------------------------------------------------------------------ streams
    def executions(self, maxsize: int = 0) -> Feed:
        """Private execution reports (:class:`~clients.sdk.models.Execution`) from now on."""
        feed = Feed(self, (), maxsize)
        self._exec_feeds.append(feed)
        orig_close = feed.close

        async def close() -> None:
            if feed in self._exec_feeds:
                self._exec_feeds.remove(feed)
            await orig_close()

        feed.close = close  # type: ignore[method-assign]
        return feed

    async def subscribe_book(self, product_id: str, maxsize: int = 0) -> BookFeed:
        """Subscribe to a product's book; the feed yields a snapshot first, then deltas, and
        resyncs by itself on a gap or a reconnection (by replay from the seq it holds, else by
        a snapshot). One feed per product and client."""
        if product_id in self._book_feeds:
            raise ValueError(f"already subscribed to the book of {product_id}")
        feed = BookFeed(self, product_id, maxsize)
        self._book_feeds[product_id] = feed
        try:
            await self._call(feed._subscribe_msg())
        except BaseException:
            self._book_feeds.pop(product_id, None)
            self._feeds.discard(feed)
            raise
        return feed

    async def subscribe_trades(self, product_id: str | None = None, maxsize: int = 0) -> Feed:
        """Public trades (:class:`~clients.sdk.models.PublicTrade`) of one product or all."""
        feed = Feed(self, ("trade",), maxsize, parse=PublicTrade.model_validate,
                    accept=lambda m: product_id is None or m.get("product_id") == product_id)
        await self._call(wire.subscribe(self._next_id(), "trades", product_id))
        self._trade_subs.add(product_id)
        return feed

    async def subscribe_products(self, maxsize: int = 0) -> tuple[ProductsResult, Feed]:
        """Every product's state now, and a feed of changes (``ProductState``, ``MarketState``,
        and ``VolatilityInterruption`` when a product's continuous trading pauses for a
        volatility auction). ``product_states`` stays current from then on."""
        parsers = {"product_state": ProductState.model_validate, "market_state": MarketState.model_validate,
                   "volatility_interruption": VolatilityInterruption.model_validate}
        feed = Feed(self, tuple(parsers), maxsize, parse=lambda m: parsers[m["type"]](m))
        r = self._on_products(await self._call(wire.subscribe(self._next_id(), "products")))
        self._products_sub = True
        return r, feed

    async def products(self) -> ProductsResult:
        """Every product's state (subscribes to the products channel to keep ``product_states`` current)."""
        r = self._on_products(await self._call(wire.subscribe(self._next_id(), "products")))
        self._products_sub = True
        return r

    def open_products(self) -> list[str]:
        """Products currently open for trading, by delivery start (needs :meth:`products` once)."""
        return sorted(p for p, s in self.product_states.items() if s == "open")

    def _on_products(self, result: dict) -> ProductsResult:
        r = ProductsResult.model_validate(result)
        self.product_states = {p.product_id: p.state for p in r.products}
        self.halted = r.halted
        return r

    # ------------------------------------------------------------------ extension hooks
    def on(self, type_: str, callback: Callable[[dict], Any]) -> Callable[[], None]:
        """Call ``callback(msg)`` for every unsolicited message of ``type_`` (``"*"``: all);
        coroutine functions are scheduled. Returns a function that removes the callback."""
        self._callbacks.setdefault(type_, []).append(callback)

        def remove() -> None:
            lst = self._callbacks.get(type_, [])
            if callback in lst:
                lst.remove(callback)

        return remove

    def messages(self, *types: str, maxsize: int = 0) -> Feed:
        """An async iterator of the unsolicited messages (dicts) of the given types (``"*"``: all)."""
        return Feed(self, types or ("*",), maxsize)

    def on_connect(self, callback: Callable[[VoltbourseClient], Awaitable[None] | None]) -> Callable[[], None]:
        """Run ``callback(client)`` after every (re)login; returns a remover."""
        self._connect_hooks.append(callback)
        return lambda: self._connect_hooks.remove(callback) if callback in self._connect_hooks else None

    # ------------------------------------------------------------------ helpers
    def _hello(self) -> Hello:
        if self.hello is None:
            raise ClientClosed("not connected yet")
        return self.hello

    async def _force_disconnect(self) -> None:
        """Testing aid: drop the socket as a network failure would (the client reconnects)."""
        if self._ws is not None:
            await self._ws.close(code=4000, message=b"client test disconnect")
