"""Hardening (issue: every request answered, every member contained): a real server,
real embedded PostgreSQL, real WebSocket connections over 127.0.0.1. (Request ids read
from any frame: tests/unit/test_protocol.py; PostgreSQL killed -9 and restarted:
tests/e2e/test_crash_restart.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import time

import aiohttp
import asyncpg
import psutil
import pytest
from support.keys import AUTH, KEYS, OPERATOR_TOKEN
from support.wsclient import WSClient, peer, personal_sign, siwe_text

from exchange.core.engine import MarketEngine
from exchange.gateway import app as app_module
from exchange.gateway import session as session_module
from exchange.gateway.marketdata import MARKET_DATA
from exchange.gateway.session import LIMITS
from exchange.runtime.db import clear_stale_socket_locks
from exchange.tools.platform import openapi

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="ws", members=KEYS[:3])]


async def _closed(c: WSClient, timeout: float = 5) -> aiohttp.WSMessage:
    """Read until the server's close frame (what arrived before it goes to the inbox)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        m = await c.ws.receive(timeout=max(0.01, end - loop.time()))
        if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return m
        if m.type == aiohttp.WSMsgType.TEXT:
            c.inbox.append(json.loads(m.data))


# ------------------------------------------------------------------ request ids


async def test_every_readable_id_gets_its_answer(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        for frame, rid in [('{"type":"place","id":"f1","product_id":"p","side":"buy","price":1e309,"quantity":1}',
                            "f1"),
                           ('{"type":"ping","id":"f2","x":NaN}', "f2"),
                           ('{"type":"ping","id":"f3","x":' + "[" * 2000 + "]" * 2000 + "}", "f3"),
                           ('{"type":"ping","id":"f4","x":99999999999999999999999999999}', "f4")]:
            await c.ws.send_str(frame)
            ans = await c.answer(rid)
            assert ans["type"] == "error" and ans["code"] in ("MALFORMED_JSON", "INVALID_MESSAGE"), ans
        assert (await c.request({"type": "ping"}))["result"]["pong"] is True  # still open


async def test_rate_limited_answers_carry_the_id_and_bursts_under_the_rate_stay_open(serve, http):
    async with serve(ws_rate_per_s=100.0, ws_burst=50) as server:
        c = await peer(http, server, 0)
        for burst in range(3):  # 75 frames per burst, 1 s apart: 75/s on average, under 100/s
            ids = [f"b{burst}-{i}" for i in range(75)]
            for rid in ids:
                await c.ws.send_str(json.dumps({"type": "ping", "id": rid}))
            answers = [await c.answer(rid) for rid in ids]
            limited = [a for a in answers if a["type"] == "error"]
            assert limited and all(a["code"] == "RATE_LIMITED" and a["id"] is not None for a in limited)
            await asyncio.sleep(1.0)
        assert (await c.request({"type": "ping"}))["type"] == "response"


# ------------------------------------------------------------------ suspension


async def test_suspension_ends_live_sessions_and_blocks_every_action(serve, http):
    async with serve() as server:
        member = KEYS[3].address  # created through the operator API, as an operator would
        r = await http.post(f"{server.http}/api/operator/members", headers=AUTH, json={
            "address": member, "role": "consumer", "retail_tariff_ticks": 30000, "feed_in_tariff_ticks": 8000,
            "collateral": 10**12})
        assert r.status == 201, await r.text()
        c = await peer(http, server, 3)
        other = await peer(http, server, 1)
        pid = server.open_products[0]
        placed = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10})
        assert placed["type"] == "response"
        r = await http.patch(f"{server.http}/api/operator/members/{member}", json={"suspended": True},
                             headers=AUTH)
        assert r.status == 200
        close = await _closed(c)
        assert close.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert any(m.get("code") == "MEMBER_SUSPENDED" for m in c.inbox)
        assert c.ws.close_code == 4003
        # the cancellation of its order reached the session before it was closed (it came after
        # the close, numbered in the private stream but never sent)
        kinds = [(m.get("exec"), m.get("reason")) if m.get("type") == "execution" else m.get("code") for m in c.inbox]
        assert ("cancelled", "suspended") in kinds, c.inbox
        assert kinds.index(("cancelled", "suspended")) < kinds.index("MEMBER_SUSPENDED"), kinds
        # its resting order is gone, the other member's session is untouched
        assert not server.market.engine.products[pid].book.best_bid()
        assert (await other.request({"type": "orders"}))["type"] == "response"
        # a new login is refused
        again = await WSClient.connect(http, server.url, KEYS[3].key)
        assert (await again.login())["code"] == "MEMBER_SUSPENDED"


async def test_out_of_range_dates_are_refused_and_the_connection_stays(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        for ts in ("9999-12-31T23:45:00-14:00", "0001-01-01T00:15:00+14:00"):
            offer = {"type": "flex_offer", "period_start": ts, "direction": "up", "power_w": 1000, "price": 100}
            assert (await c.request(offer))["code"] == "INVALID_MESSAGE"
            baseline = {"type": "flex_baseline", "slots": [{"start": ts, "consumption_wh": 1}]}
            assert (await c.request(baseline))["code"] == "INVALID_MESSAGE"
            meter = {"type": "flex_meter", "readings": [{"interval_start": ts, "consumption_wh": 1}]}
            assert (await c.request(meter))["code"] == "INVALID_MESSAGE"
        assert (await c.request({"type": "ping"}))["type"] == "response"
        # the same dates over the operator REST API: 422, and the events stay readable
        for ts in ("9999-12-31T23:45:00-14:00", "0001-01-01T00:15:00+14:00", "2026-11-22T17:00:00"):
            async with http.post(f"{server.http}/api/operator/flexibility/events", headers=AUTH,
                                 json={"period_start": ts}) as r:
                assert r.status == 422 and (await r.json())["error"] == "INVALID_REQUEST", ts
            async with http.get(f"{server.http}/api/operator/flexibility/viability", headers=AUTH,
                                params={"period_start": ts}) as r:
                assert r.status == 422, ts
        async with http.get(f"{server.http}/api/operator/flexibility/events", headers=AUTH) as r:
            assert r.status == 200


# ------------------------------------------------------------------ containment


async def test_sessions_per_member_are_capped(serve, http):
    async with serve(ws_sessions_per_member=2) as server:
        first, second = await peer(http, server, 0), await peer(http, server, 0)  # kept open
        third = await WSClient.connect(http, server.url, KEYS[0].key)
        answer = await third.login()
        assert answer.get("code") == "TOO_MANY_SESSIONS", answer
        await first.ws.close()
        await asyncio.sleep(0.1)
        assert (await (await WSClient.connect(http, server.url, KEYS[0].key)).login())["type"] == "response"
        await second.ws.close()


async def test_a_connection_that_never_logs_in_is_closed(serve, http):
    async with serve(ws_login_timeout_s=0.5) as server:
        c = await WSClient.connect(http, server.url, KEYS[0].key)
        await _closed(c)
        assert c.ws.close_code == 1008


async def test_connections_per_address_are_capped(serve, http):
    async with serve(ws_connections_per_ip=2) as server:
        a = await WSClient.connect(http, server.url)
        b = await WSClient.connect(http, server.url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await WSClient.connect(http, server.url)
        assert e.value.status == 429
        await a.ws.close()
        await b.ws.close()
        await asyncio.sleep(0.1)
        await WSClient.connect(http, server.url)  # room again


async def test_a_peer_that_does_not_read_is_dropped_by_bytes(serve, http):
    """A session whose queue holds more than ws_send_queue_bytes is closed (1013) whatever
    the number of messages: memory per stalled session is bounded in bytes."""
    async with serve(ws_send_queue_bytes=64 * 1024) as server:
        c = await peer(http, server, 0)
        session = next(iter(server.runner.app[MARKET_DATA].peers.sessions(KEYS[0].address)))
        big = "x" * 20_000
        for _ in range(4):
            session.send_raw(big)  # nothing is read meanwhile: the sender cannot keep up in one loop turn
        assert session.closed
        close = await _closed(c)
        assert close.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def _stalled(session, size: int) -> None:
    """Queue one ``size``-character message to a peer that does not read, and wait until the
    sender has handed part of it to the transport and waits for the peer (no kernel buffer
    takes 16 MB)."""
    session.send_raw("x" * size)
    transport = session.frames.transport
    for _ in range(500):
        await asyncio.sleep(0.01)
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            return
    raise AssertionError("the sender never waited for the peer")


async def test_what_the_sender_holds_for_a_stalled_peer_counts_against_its_cap(serve, http):
    """A burst handed to the writer but not yet written to the peer still counts in
    queued_bytes: a peer that stops reading cannot make the session accept more than its cap."""
    size = 16 * 1024 * 1024
    async with serve(ws_send_queue_bytes=size + 1024) as server:
        c = await peer(http, server, 0)
        session = next(iter(server.runner.app[MARKET_DATA].peers.sessions(KEYS[0].address)))
        await _stalled(session, size)
        assert not session.sender.done()
        assert session.queued_bytes == size, "the unwritten burst is still counted"
        session.send_raw("y" * 2048)  # over the cap with what the stalled sender holds
        assert session.closed
        await _closed(c, timeout=30)  # reading again: the burst, then the close frame


async def test_a_close_with_flush_to_a_peer_that_does_not_read_ends_the_connection(serve, http, monkeypatch):
    """close(flush=True) waits for what is queued to be written; a peer that never reads it is
    dropped after FLUSH_TIMEOUT_S, and its connection slot is released."""
    monkeypatch.setattr(session_module, "FLUSH_TIMEOUT_S", 0.5)
    async with serve(ws_send_queue_bytes=64 * 1024 * 1024) as server:
        c = await peer(http, server, 0)  # kept open, never read
        session = next(iter(server.runner.app[MARKET_DATA].peers.sessions(KEYS[0].address)))
        await _stalled(session, 16 * 1024 * 1024)
        session.close(4003, "policy", flush=True)
        limits = server.runner.app[LIMITS].counts
        for _ in range(500):
            await asyncio.sleep(0.01)
            if session.sender.done() and not limits.per_ip:
                break
        assert session.sender.done() and session.frames.transport.is_closing()
        assert not limits.per_ip, "the handler ended and released the address's slot"
        await c.ws.close()


# ------------------------------------------------------------------ no 500 on any route

HOSTILE = ["99999999999999999999", "9" * 400, "-1", "%C2%B2", "\u00b2", "0x", "nul", "1e309", "NaN", "",
           "../../etc/passwd", "9999-12-31T23:45:00-14:00", "a\x00b", '{"x": "a\\u0000"}']


def _routes():
    doc = openapi()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path == "/ws":
                continue
            yield method.upper(), path, op


async def test_no_route_answers_500_to_hostile_values(serve, http):
    """Every route of the generated OpenAPI, with hostile values in every path and query
    parameter and as the body: a 4xx (or a 2xx), never a 5xx other than a declared 503."""
    async with serve() as server:
        seen = 0
        for method, path, op in _routes():
            params = op.get("parameters", [])
            for value in HOSTILE:
                url = path
                for p in params:
                    if p["in"] == "path":
                        url = url.replace("{" + p["name"] + "}", value or "x")
                query = {p["name"]: value for p in params if p["in"] == "query"}
                body = value.encode() if method in ("POST", "PATCH", "PUT") else None
                async with http.request(method, server.http + url, params=query, data=body,
                                        headers=AUTH) as r:
                    seen += 1
                    assert r.status < 500 or (r.status == 503 and "503" in op["responses"]), \
                        (method, path, value, r.status, await r.text())
                    rid = r.headers.get("X-Request-Id")
                    assert rid and re.fullmatch("[0-9a-f]{16}", rid), (method, path, dict(r.headers))
                    if r.status >= 400:  # every refusal is JSON and names the id of its answer
                        body = await r.json()
                        assert body["request_id"] == rid, (method, path, value, body)
        assert seen > 300


async def test_every_route_names_the_request_id_and_a_fault_is_json_with_it(serve, http, monkeypatch, caplog):
    """The request id of docs/rest.md#errors on every route of every subsystem, the
    caller's own when sane, and a server fault answered as JSON under an id its log line names."""
    async with serve() as server:
        async with http.get(server.http + "/api/products", headers={"X-Request-Id": "mine-1"}) as r:
            assert r.status == 200 and r.headers["X-Request-Id"] == "mine-1"
        async with http.get(server.http + "/api/trades", params={"limit": "x"},
                            headers={"X-Request-Id": "not sane!"}) as r:
            body = await r.json()
            assert r.status == 422 and re.fullmatch("[0-9a-f]{16}", body["request_id"]), body
            assert r.headers["X-Request-Id"] == body["request_id"]
        for i, (method, path, data) in enumerate((
                ("GET", "/portal/session", None),  # the portal: no session
                ("POST", "/portal/siwe/login", b"{"),  # the portal: not JSON
                ("GET", "/api/operator/metering/bills", None),  # metering: no token
                ("POST", "/api/operator/metering/readings", b"[]"),  # metering, operator: no token
                ("GET", "/api/trades/999999/proof", None),  # proofs: unknown trade
                ("GET", "/api/operator/flexibility", None),  # flexibility: no token
                ("GET", "/api/nope", None),  # no route
                ("GET", "/ws", None),  # the WebSocket endpoint without its upgrade (was text/plain)
                ("GET", "/api/products/" + "p" * 5000 + "/book", None))):  # a long unknown product id
            async with http.request(method, server.http + path, data=data,
                                    headers={"X-Request-Id": f"sub-{i}"}) as r:
                assert r.status >= 400 and r.content_type == "application/json", (path, r.status, await r.text())
                body = await r.json()
                assert body["request_id"] == f"sub-{i}" == r.headers["X-Request-Id"], (path, body)
                assert len(body["message"]) < 600, (path, body)  # what the caller sent, not echoed whole

        def broken(engine):
            raise RuntimeError("a bug")

        monkeypatch.setattr(app_module, "products_sorted", broken)
        with caplog.at_level(logging.ERROR, logger="exchange.gateway.http"):
            async with http.get(server.http + "/api/products", headers={"X-Request-Id": "fault-1"}) as r:
                body = await r.json()
        assert r.status == 500 and body["error"] == "INTERNAL" and body["request_id"] == "fault-1", body
        assert any("fault-1" in rec.getMessage() and rec.exc_info for rec in caplog.records)
        monkeypatch.undo()
        c = await peer(http, server, 0)  # the server goes on
        assert (await c.request({"type": "ping"}))["result"]["pong"] is True
        await c.ws.close()


async def test_a_nul_character_is_refused_at_every_edge_and_changes_nothing(serve, http):
    """PostgreSQL's text and jsonb cannot hold U+0000: a halt reason with one stopped the
    market's engine (its journal commit failed for good), a member's name answered 500. Every
    edge refuses it, naming where, before anything happens."""
    async with serve() as server:
        engine = server.market.engine
        before = engine.state_hash()
        nul = "a\\u0000b"  # the JSON text of a NUL character
        for method, path, body in (
                ("POST", "/api/operator/market/halt", f'{{"reason": "{nul}"}}'),
                ("POST", "/api/operator/members", '{"address": "0x' + "1" * 40 + '", "role": "consumer", '
                 f'"name": "{nul}", "retail_tariff_ticks": 25000, "feed_in_tariff_ticks": 7000}}'),
                ("POST", "/api/operator/members", f'{{"{nul}": 1}}')):
            async with http.request(method, server.http + path, data=body,
                                    headers={**AUTH, "Content-Type": "application/json"}) as r:
                ans = await r.json()
                assert r.status == 422 and ans["error"] == "INVALID_REQUEST", ans
                assert "NUL" in ans["message"] and ans["details"][0]["type"] == "string_nul", ans
        async with http.get(server.http + "/api/trades", params={"product_id": "x\x00"}) as r:
            ans = await r.json()
            assert r.status == 422 and ans["details"][0]["loc"] == ["product_id"], ans
        async with http.get(server.http + "/api/trades?after=1&after=2") as r:  # which one? refused
            ans = await r.json()
            assert r.status == 422 and ans["details"] == [{"loc": ["after"], "msg": "given more than once",
                                                           "type": "duplicate"}], ans
        async with http.get(server.http + "/api/operator/members/a%00b", headers=AUTH) as r:
            assert r.status == 422 and (await r.json())["details"][0]["loc"] == ["path"]
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        await c.ws.send_str('{"type": "place", "id": "n1", "product_id": "' + pid + '", "side": "buy", '
                            '"price": 100, "quantity": 10, "client_order_id": "' + nul + '"}')
        ans = await c.answer("n1")
        assert ans["code"] == "INVALID_MESSAGE" and "client_order_id" in ans["message"], ans
        assert "NUL" in ans["message"]
        assert (await c.request({"type": "ping"}))["result"]["pong"] is True  # still open
        assert engine.state_hash() == before and not engine.halted and server.market.runtime.running
        # an escaped backslash before u0000 is no NUL: an ordinary text
        async with http.post(server.http + "/api/operator/members", headers=AUTH, json={
                "address": "0x" + "2" * 40, "role": "consumer", "name": "back\\u0000slash",
                "retail_tariff_ticks": 25000, "feed_in_tariff_ticks": 7000}) as r:
            assert r.status == 201 and (await r.json())["name"] == "back\\u0000slash"


# ------------------------------------------------------------------ operator page login


async def test_failed_operator_logins_do_not_lock_the_operator_out(serve, http):
    """Guessing is throttled per source (429 for wrong tokens past the limit), but the right
    token is always accepted: another source's guessing never locks the operator out."""
    async with serve() as server:
        for _ in range(12):
            async with http.post(server.http + "/operator/login", json={"token": "wrong"}) as r:
                last = r.status
        assert last == 429
        async with http.post(server.http + "/operator/login", json={"token": OPERATOR_TOKEN}) as r:
            assert r.status == 200 and (await r.json())["operator"] is True


async def test_same_origin_is_the_configured_public_origin(serve, http):
    """With public_origin set, a forged Host header does not make a foreign Origin 'same'."""
    async with serve(public_origin="https://exchange.example.org") as server:
        forged = {"Origin": "http://evil.example", "Host": "evil.example"}
        async with http.post(server.http + "/operator/login", json={"token": OPERATOR_TOKEN}, headers=forged) as r:
            assert r.status == 403
        ok = {"Origin": "https://exchange.example.org"}
        async with http.post(server.http + "/operator/login", json={"token": OPERATOR_TOKEN}, headers=ok) as r:
            assert r.status == 200
        # the OpenAPI document names the public origin as its server, whatever the Host header
        async with http.get(server.http + "/api/openapi.json", headers={"Host": "evil.example"}) as r:
            assert (await r.json())["servers"][0]["url"] == "https://exchange.example.org"


async def test_a_sign_in_never_names_a_host_the_caller_chose(serve, http):
    """A phishing site's domain: the member signs "evil.example wants you to sign in", the site
    sends it here with Host: evil.example. The offer and the check took the Host header; now
    they take PUBLIC_ORIGIN, or a loopback or configured host of a local deployment."""
    evil = {"Host": "evil.example"}
    async with serve() as server:
        async with http.get(server.http + "/portal/siwe/nonce", headers=evil) as r:
            body = await r.json()
            assert r.status == 401 and body["error"] == "SIWE_WRONG_DOMAIN" and "PUBLIC_ORIGIN" in body["message"]
        async with http.ws_connect(server.url, headers=evil) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello.get("siwe") is None
            offer = {"domain": "evil.example", "uri": "ws://evil.example/ws", "chain_id": hello["eip712_domain"]["chainId"],
                     "version": "1", "statement": "Sign in.", "nonce": "a1b2c3d4e5f6a7b8",
                     "issued_at": "2026-11-27T00:00:00Z"}
            text = siwe_text(offer, KEYS[0].address)
            await ws.send_json({"type": "login", "id": 1, "message": text, "signature": personal_sign(text, KEYS[0])})
            ans = await ws.receive_json(timeout=5)
            assert ans["type"] == "error" and ans["code"] == "SIWE_WRONG_DOMAIN", ans
        async with http.get(server.http + "/portal/siwe/nonce") as r:  # the exchange's own address
            assert r.status == 200 and (await r.json())["domain"] == server.http.split("//")[1]
    async with serve(public_origin="https://exchange.example.org") as server:
        async with http.get(server.http + "/portal/siwe/nonce", headers=evil) as r:
            body = await r.json()
            assert r.status == 200 and body["domain"] == "exchange.example.org", body
            assert body["uri"] == "https://exchange.example.org/portal"


async def test_a_path_id_is_ascii_digits(serve, http):
    """int() takes the full-width "１" (and " 1_0 "): GET .../events/%EF%BC%91 answered event 1."""
    async with serve() as server:
        for raw in ("%EF%BC%91", "1_0", "%201"):
            async with http.get(f"{server.http}/api/operator/flexibility/events/{raw}", headers=AUTH) as r:
                body = await r.json()
                assert r.status == 422 and body["error"] == "INVALID_REQUEST", (raw, body)


async def test_a_sign_in_time_out_of_range_in_utc_is_refused_and_the_connection_lives(serve, http):
    """9999-12-31T23:59:59-23:59 is a valid RFC 3339 time that is beyond datetime's range in
    UTC: its OverflowError escaped the parser, dropped the WebSocket without an answer
    (before any login) and answered 500 on the portal."""
    async with serve() as server:
        async with http.ws_connect(server.url) as ws:
            hello = await ws.receive_json(timeout=5)
            for field in ("issued_at", "expiration_time"):
                text = siwe_text(hello["siwe"], KEYS[0].address, **{field: "9999-12-31T23:59:59-23:59"})
                await ws.send_json({"type": "login", "id": field, "message": text,
                                    "signature": personal_sign(text, KEYS[0])})
                ans = await ws.receive_json(timeout=5)
                assert ans["type"] == "error" and ans["id"] == field and ans["code"] == "SIWE_INVALID", ans
                assert "not a valid date-time" in ans["message"], ans
            await ws.send_json({"type": "ping", "id": "alive"})
            assert (await ws.receive_json(timeout=5))["result"]["pong"] is True
        async with http.get(server.http + "/portal/siwe/nonce") as r:
            offer = await r.json()
        text = siwe_text(offer, KEYS[0].address, issued_at="0001-01-01T00:00:00+23:59")
        async with http.post(server.http + "/portal/siwe/login",
                             json={"message": text, "signature": personal_sign(text, KEYS[0])}) as r:
            body = await r.json()
            assert r.status == 401 and body["error"] == "SIWE_INVALID" and body["request_id"], body


async def test_stale_socket_locks_are_removed_live_ones_kept(tmp_path, pg_dsn):
    """A socket lock naming a zombie (a killed server nobody reaped) or a dead pid goes, with
    its socket; one naming a running postgres stays."""
    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not waited for
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".s.PGSQL.5432.lock").write_text(f"{zombie.pid}\n/x\n")
    (tmp_path / ".s.PGSQL.5432").write_text("")
    (tmp_path / ".s.PGSQL.5433.lock").write_text(f"{dead.pid}\n/x\n")
    conn = await asyncpg.connect(pg_dsn)  # its backend: a running postgres for as long as we hold it
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        assert psutil.Process(backend).name() == "postgres"
        (tmp_path / ".s.PGSQL.5434.lock").write_text(f"{backend}\n/x\n")
        removed = clear_stale_socket_locks(tmp_path)
    finally:
        await conn.close()
    zombie.wait()
    assert {p.name for p in removed} == {".s.PGSQL.5432.lock", ".s.PGSQL.5433.lock"}
    assert not (tmp_path / ".s.PGSQL.5432").exists()
    assert (tmp_path / ".s.PGSQL.5434.lock").exists()


# ------------------------------------------------------------------ reads off the commit path


async def test_positions_in_memory_equal_the_trades_table_before_and_after_a_restart(serve, http):
    """Members' positions are answered from memory (no database work on the read); they equal
    the committed trades as the database has them, live and after a restart."""
    async with serve(market_id="pos") as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        for i, pid in enumerate(server.open_products[:3]):
            await a.request({"type": "place", "product_id": pid, "side": "sell", "price": 5000 + i, "quantity": 700})
            await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 6000, "quantity": 500})
        live = (await a.request({"type": "positions"}))["result"]["positions"]
        sql = sorted((pid, bought, sold, payable) for member, pid, bought, sold, payable
                     in await server.market.trades.position_totals(server.market.runtime.committed_seq)
                     if member == KEYS[0].address)
        assert [(p["product_id"], p["bought"], p["sold"], p["payable"]) for p in live] == sql
        assert [p["sold"] for p in live] == [500, 500, 500]
    async with serve(market_id="pos") as server:
        a = await peer(http, server, 0)
        after = (await a.request({"type": "positions"}))["result"]["positions"]
        assert [(p["product_id"], p["payable"]) for p in after] == [(p["product_id"], p["payable"]) for p in live]


async def test_a_signed_order_refused_during_a_halt_cannot_be_replayed_after_resume(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        order = c.sign_order({"product_id": pid, "side": "buy", "price": 100, "quantity": 10},
                             server.settings.market_id, nonce=42)
        async with http.post(f"{server.http}/api/operator/market/halt", headers=AUTH, json={"reason": "x"}) as r:
            assert r.status == 200
        assert (await c.request({"type": "place", **order}))["code"] == "MARKET_HALTED"
        async with http.post(f"{server.http}/api/operator/market/resume", headers=AUTH) as r:
            assert r.status == 200
        assert (await c.request({"type": "place", **order}))["code"] == "NONCE_REUSED"
        assert not server.market.engine.orders


async def test_depth_limited_book_subscription_sends_bounded_snapshots(serve, http):
    """A 200-level book: a subscriber asking for depth 5 gets 5 levels per side, in the
    first snapshot and after each change, never the whole book."""
    async with serve() as server:
        pid = server.open_products[0]
        for i in range(200):
            await server.place(1, "sell", 9000 + i, 1, pid)
        c = await peer(http, server, 0)
        ans = await c.request({"type": "subscribe", "channel": "book", "product_id": pid, "depth": 5})
        assert ans["result"] == {"channel": "book", "product_id": pid, "depth": 5}
        snap = await c.next_of(lambda m: m.get("type") == "book_snapshot")
        assert len(snap["asks"]) == 5 and snap["asks"][0][0] == 9000
        await server.place(2, "sell", 8999, 3, pid)
        after = await c.next_of(lambda m: m.get("type") == "book_snapshot")
        assert [lvl[0] for lvl in after["asks"]] == [8999, 9000, 9001, 9002, 9003] and after["seq"] > snap["seq"]
        await c.drain(0.3)
        assert not [m for m in c.inbox if m.get("type") == "book"]  # no deltas for a depth subscriber
        bad = await c.request({"type": "subscribe", "channel": "trades", "depth": 5})
        assert bad["code"] == "INVALID_MESSAGE"


# ------------------------------------------------------------------ what a rejection costs


async def test_rejected_orders_cost_no_journal_rows_and_no_memory(serve, http):
    """20 000-style floods of refused orders with unique client ids: no journal row, no
    client id kept; each refusal is still answered with its id; a rejected id may be reused."""
    async with serve(market_id="rej") as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        rows = await server.market.pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'rej'")
        for i in range(500):
            ans = await c.request({"type": "place", "id": f"r{i}", "product_id": pid, "side": "buy",
                                   "price": 10**7, "quantity": 1, "client_order_id": f"bad-{i}"})
            assert ans["id"] == f"r{i}" and ans["code"] == "PRICE_OUT_OF_BOUNDS", ans
        assert await server.market.pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'rej'") == rows
        assert not server.market.engine.client_ids
        ok = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 1,
                              "client_order_id": "bad-7"})
        assert ok["type"] == "response" and not ok["result"].get("duplicate"), ok
        # a replay of the journal (which has no rejections) rebuilds exactly the same state
        fresh = MarketEngine(server.market.engine.config)
        await server.market.journal.replay(fresh)
        assert fresh.seq == server.market.engine.seq and fresh.state_hash() == server.market.engine.state_hash()


# ------------------------------------------------------------------ price controls


@pytest.mark.server(market_id="vol", members=KEYS[:3], volatility_min_ticks=500, volatility_bp=0,
                    volatility_auction_s=30, price_band_bp=0, price_band_min_ticks=2000, max_order_value_eur=100)
async def test_price_controls_over_the_websocket(serve, http):
    async with serve() as server:
        pid = server.open_products[0]
        a, b, watcher = await peer(http, server, 0), await peer(http, server, 1), await peer(http, server, 2)
        await watcher.request({"type": "subscribe", "channel": "products"})
        await a.request({"type": "place", "product_id": pid, "side": "sell", "price": 10_000, "quantity": 10})
        await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 10_000, "quantity": 5})
        # the band around the last price (10 000 +- 2000 ticks)
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 12_001, "quantity": 1})
        assert r["code"] == "PRICE_OUTSIDE_BAND" and "12000" in r["message"], r
        # the value limit: 100 EUR = 10**10 money units
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10**8 + 1})
        assert r["code"] == "ORDER_VALUE_TOO_LARGE", r
        # a jump beyond 500 ticks: a volatility auction
        await a.request({"type": "place", "product_id": pid, "side": "sell", "price": 11_000, "quantity": 5})
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 11_000, "quantity": 10})
        assert r["type"] == "response" and r["result"]["filled"] == 5, r  # 5 at 10 000, then the pause
        vi = await watcher.next_of(lambda m: m.get("type") == "volatility_interruption")
        assert (vi["product_id"], vi["price"], vi["reference"]) == (pid, 11_000, 10_000) and vi["until"].endswith("Z")
        st = await watcher.next_of(lambda m: m.get("type") == "product_state")
        assert st["state"] == "auction"
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 11_000, "quantity": 1,
                             "tif": "ioc"})
        assert r["code"] == "TIF_NOT_SUPPORTED", r
        server.clock.advance(31)
        st = await watcher.next_of(lambda m: m.get("type") == "product_state" and m["state"] == "open", timeout=5)
        assert st["product_id"] == pid
        assert server.market.engine.products[pid].ref_price == 11_000  # the auction cleared at 11 000
