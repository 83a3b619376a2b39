"""The member portal's sign-in over real HTTP and WebSocket on loopback, against a real market
(embedded PostgreSQL): Sign-In with Ethereum (nonce, message, signature by a test key), the
session cookie and its flags, the peer WebSocket signed in by the cookie (same origin only),
refusals, CSRF-protected sign-out (one session, everywhere), a session across a restart, the
demo link, the page's files; and the WebSocket's own SIWE login (the challenge kept, deprecated)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from support.keys import KEYS, OUTSIDER
from support.wsclient import WSClient, personal_sign, siwe_text

from exchange.core.model import RegisterMember
from exchange.protocol import siwe

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="portal", members=KEYS[:3])]

A, B = KEYS[0], KEYS[1]


def _t(dt: datetime) -> str:
    return siwe.format_time(dt.replace(microsecond=0))


async def nonce(http, server) -> dict:
    async with http.get(f"{server.http}/portal/siwe/nonce") as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        return await r.json()


def signed(offer: dict, key, signer=None, **changes) -> dict:
    text = siwe_text(offer, key.address, **changes)
    return {"message": text, "signature": personal_sign(text, signer or key)}


async def post(http, url: str, body=None, headers=None) -> tuple[int, dict, aiohttp.ClientResponse]:
    async with http.post(url, json=body, headers=headers or {}) as r:
        return r.status, await r.json(), r


def cookie_of(resp: aiohttp.ClientResponse) -> str | None:
    for header in resp.headers.getall("Set-Cookie", []):
        name, _, rest = header.partition("=")
        if name == "vb_portal":
            return rest.split(";")[0]
    return None


async def sign_in(http, server, key=A) -> tuple[str, dict]:
    """(session id, login answer)."""
    status, body, r = await post(http, f"{server.http}/portal/siwe/login", signed(await nonce(http, server), key))
    assert status == 200, body
    sid = cookie_of(r)
    assert sid
    return sid, body


def jar(sid: str, origin: str | None = None) -> dict:
    h = {"Cookie": f"vb_portal={sid}"}
    if origin is not None:
        h["Origin"] = origin
    return h


async def session_of(http, server, sid: str) -> tuple[int, dict]:
    async with http.get(f"{server.http}/portal/session", headers=jar(sid)) as r:
        return r.status, await r.json()


async def test_sign_in_sets_a_strict_cookie_and_signs_the_websocket_in(server, http):
    n = await nonce(http, server)
    host = f"127.0.0.1:{server.port}"
    assert (n["domain"], n["uri"], n["chain_id"], n["version"]) == (host, f"http://{host}/portal", 1337, "1")
    assert n["statement"] == "Sign in to the Voltbourse member portal of community portal."
    issued, expires = siwe.parse_time(n["issued_at"]), siwe.parse_time(n["expiration_time"])
    assert expires - issued == timedelta(minutes=10) and abs(datetime.now(UTC) - issued) < timedelta(seconds=5)
    assert len(n["nonce"]) >= 8 and n["nonce"].isalnum()

    status, body, r = await post(http, f"{server.http}/portal/siwe/login", signed(n, A))
    assert status == 200, body
    assert body["member"] == A.address and set(body) == {"member", "expires_at", "csrf_token"}
    ttl = siwe.parse_time(body["expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=11, minutes=59) < ttl <= timedelta(hours=12)
    (header,) = [h for h in r.headers.getall("Set-Cookie") if h.startswith("vb_portal=")]
    flags = {f.strip().split("=")[0].lower(): f.strip() for f in header.split(";")[1:]}
    assert flags["httponly"] and flags["samesite"] == "SameSite=Strict" and flags["path"] == "Path=/"
    assert flags["max-age"] == "Max-Age=43200" and "secure" not in flags  # plain http here
    sid = cookie_of(r)
    assert len(sid) == 43
    # only the hash of the session id is stored
    rows = await server.market.read_pool.fetch("SELECT sid_hash, member FROM portal_sessions")
    assert [(len(x["sid_hash"]), x["member"]) for x in rows] == [(64, A.address)] and sid not in rows[0]["sid_hash"]

    assert await session_of(http, server, sid) == (200, body)
    async with http.get(f"{server.http}/portal/session") as r:
        assert r.status == 401 and (await r.json())["error"] == "NOT_SIGNED_IN"
    assert (await session_of(http, server, "x" * 43))[1]["error"] == "NOT_SIGNED_IN"

    # the peer WebSocket with the cookie, from the portal's own origin: signed in already
    c = await WSClient.connect(http, server.url, headers=jar(sid, server.http))
    assert c.hello["member"] == A.address and c.hello["auth"] == "portal" and "siwe" not in c.hello
    assert c.hello["pseq"] == 0 and c.hello["pstream"]
    assert (await c.request({"type": "login", "message": "x", "signature": "0x" + "00" * 65}))["code"] \
        == "ALREADY_AUTHENTICATED"
    pid = server.open_products[0]
    r = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 7000, "quantity": 100})
    assert r["type"] == "response" and r["result"]["status"] == "resting", r
    assert server.books()[pid][0][1] == A.address

    # the cookie from another origin (cross-site WebSocket hijacking), or with no Origin: not signed in
    for headers in (jar(sid, "http://evil.example"), jar(sid, f"https://evil.example:{server.port}"), jar(sid)):
        x = await WSClient.connect(http, server.url, headers=headers)
        assert "member" not in x.hello and x.hello["siwe"]["domain"] == host
        assert (await x.request({"type": "orders"}))["code"] == "NOT_AUTHENTICATED"
        await x.ws.close()
    # a bad cookie falls back to the normal login
    x = await WSClient.connect(http, server.url, B.key, headers=jar("y" * 43, server.http))
    assert "member" not in x.hello
    assert (await x.login())["result"]["member"] == B.address
    await asyncio.gather(c.ws.close(), x.ws.close())


async def test_refusals_leak_no_session(server, http):
    url = f"{server.http}/portal/siwe/login"
    now = datetime.now(UTC)

    async def refused(body, code: str, status: int = 401, headers=None) -> None:
        st, answer, r = await post(http, url, body, headers)
        assert (st, answer.get("error")) == (status, code), answer
        assert cookie_of(r) is None

    n = await nonce(http, server)
    await refused(signed(n, A, domain="evil.example"), "SIWE_WRONG_DOMAIN")
    await refused(signed(n, A, uri="http://evil.example/portal"), "SIWE_WRONG_DOMAIN")
    await refused(signed(n, A, chain_id=1), "SIWE_WRONG_CHAIN")
    await refused(signed(n, A, issued_at=_t(now - timedelta(minutes=30)),
                         expiration_time=_t(now - timedelta(minutes=20))), "SIWE_EXPIRED")
    await refused(signed(n, A, issued_at=_t(now + timedelta(minutes=5))), "SIWE_NOT_YET_VALID")
    await refused(signed(n, A, nonce="abcdefgh12345678"), "SIWE_NONCE_UNKNOWN")
    await refused(signed(n, A, signer=B), "BAD_SIGNATURE")  # A's message signed by B's key
    await refused(signed(n, OUTSIDER), "UNKNOWN_MEMBER")
    await refused({"message": signed(n, A)["message"].lower(), "signature": signed(n, A)["signature"]},
                  "SIWE_INVALID")
    await refused({"message": signed(n, A)["message"] + "\n", "signature": signed(n, A)["signature"]},
                  "SIWE_INVALID")
    await refused({"message": "hello"}, "INVALID_REQUEST", 422)
    await refused(signed(n, A), "CSRF", 403, {"Origin": "http://evil.example"})
    # after all that the nonce still signs A in once, and never again (a replay)
    good = signed(n, A)
    st, body, _ = await post(http, url, good)
    assert st == 200 and body["member"] == A.address
    await refused(good, "SIWE_NONCE_USED")
    # a nonce that expired in the store
    n2 = await nonce(http, server)
    await server.market.read_pool.execute("UPDATE portal_nonces SET expires_at = now() - interval '1 second' "
                                          "WHERE nonce = $1", n2["nonce"])
    await refused(signed(n2, A), "SIWE_EXPIRED")
    # a suspended member: no sign-in, and its live session stops working
    sid, _ = await sign_in(http, server, B)
    await server.market.runtime.submit(RegisterMember(0, B.address, collateral=None, export_capacity_w=10**7,
                                                      suspended=True))
    await refused(signed(await nonce(http, server), B), "MEMBER_SUSPENDED")
    assert (await session_of(http, server, sid))[1]["error"] == "MEMBER_SUSPENDED"
    c = await WSClient.connect(http, server.url, headers=jar(sid, server.http))
    assert "member" not in c.hello
    assert (await c.next_of(lambda m: m["type"] == "error"))["code"] == "MEMBER_SUSPENDED"
    await c.ws.close()


async def test_sign_out_needs_csrf_and_sign_out_everywhere_ends_every_session(server, http):
    s1, v1 = await sign_in(http, server)
    s2, v2 = await sign_in(http, server)
    s3, v3 = await sign_in(http, server)
    assert len({v1["csrf_token"], v2["csrf_token"], v3["csrf_token"]}) == 3
    w2 = await WSClient.connect(http, server.url, headers=jar(s2, server.http))
    w3 = await WSClient.connect(http, server.url, headers=jar(s3, server.http))
    assert w2.hello["member"] == w3.hello["member"] == A.address
    out = f"{server.http}/portal/logout"
    for headers, code, status in [(jar(s1), "CSRF", 403),
                                  ({**jar(s1), "X-CSRF-Token": v2["csrf_token"]}, "CSRF", 403),
                                  ({**jar(s1, "http://evil.example"), "X-CSRF-Token": v1["csrf_token"]}, "CSRF", 403),
                                  ({"X-CSRF-Token": v1["csrf_token"]}, "NOT_SIGNED_IN", 401)]:
        st, body, _ = await post(http, out, {}, headers)
        assert (st, body["error"]) == (status, code), body
    assert (await session_of(http, server, s1))[0] == 200
    st, body, r = await post(http, out, {}, {**jar(s1, server.http), "X-CSRF-Token": v1["csrf_token"]})
    assert (st, body) == (200, {"signed_out": 1})
    assert any(h.startswith("vb_portal=") and "Max-Age=0" in h for h in r.headers.getall("Set-Cookie"))
    assert (await session_of(http, server, s1))[0] == 401 and (await session_of(http, server, s2))[0] == 200
    # sign out everywhere: needs the CSRF token too
    st, body, _ = await post(http, f"{server.http}/portal/logout-all", {}, jar(s3))
    assert (st, body["error"]) == (403, "CSRF")
    st, body, _ = await post(http, f"{server.http}/portal/logout-all", {}, {**jar(s3), "X-CSRF-Token": v3["csrf_token"]})
    assert (st, body) == (200, {"signed_out": 2})
    for sid in (s2, s3):
        assert (await session_of(http, server, sid))[0] == 401
    for w in (w2, w3):  # the connections they signed in end
        err = await w.next_of(lambda m: m["type"] == "error")
        assert err["code"] == "SIGNED_OUT"
        msg = await w.ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401
    again = await WSClient.connect(http, server.url, headers=jar(s2, server.http))  # a second session's WS: refused
    assert "member" not in again.hello and "siwe" in again.hello
    assert (await again.request({"type": "orders"}))["code"] == "NOT_AUTHENTICATED"
    await again.ws.close()


async def test_a_session_survives_a_restart(server, http):
    sid, view = await sign_in(http, server)
    await server.restart()
    assert await session_of(http, server, sid) == (200, view)
    c = await WSClient.connect(http, server.url, headers=jar(sid, server.http))
    assert c.hello["member"] == A.address
    await c.ws.close()


async def test_demo_link_only_with_the_demo_key(serve, http):
    async with serve() as server:
        async with http.get(f"{server.http}/portal/demo-login", params={"member": A.address, "key": "x" * 20},
                            allow_redirects=False) as r:
            assert r.status == 404
    key = "demo-key-0123456789"
    async with serve(portal_demo_login=key) as server:
        url = f"{server.http}/portal/demo-login"
        for params in ({"member": A.address, "key": "wrong-key-0123456789"}, {"member": A.address}):
            async with http.get(url, params=params, allow_redirects=False) as r:
                assert r.status in (404, 422) and cookie_of(r) is None
        async with http.get(url, params={"member": OUTSIDER.address, "key": key}, allow_redirects=False) as r:
            assert r.status == 401 and (await r.json())["error"] == "UNKNOWN_MEMBER"
        async with http.get(url, params={"member": A.address.lower(), "key": key}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/portal"
            sid = cookie_of(r)
        st, view = await session_of(http, server, sid)
        assert st == 200 and view["member"] == A.address
        # a User-Agent that is not UTF-8 (answered 500 where the session was stored)
        port = int(server.http.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /portal/demo-login?member={A.address}&key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                     + b"User-Agent: abc\xff\xfedef\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = (await reader.read(65536)).split(b"\r\n", 1)[0]
        writer.close()
        assert head == b"HTTP/1.1 303 See Other", head


async def test_the_page_and_its_files_with_security_headers(server, http):
    for path in ("/portal", "/portal/", "/portal/static/index.html"):
        async with http.get(server.http + path) as r:
            assert r.status == 200 and r.content_type == "text/html", path
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "same-origin"
            assert "{{BASE}}" not in await r.text(), path  # the template's placeholder, filled in
    for path in ("/portal/static/nope.js", "/portal/static/..%2Fplugin.py", "/portal/static/.hidden"):
        async with http.get(server.http + path) as r:
            assert r.status == 404, path


async def test_websocket_login_with_siwe_and_the_deprecated_challenge(server, http):
    host = f"127.0.0.1:{server.port}"
    c = await WSClient.connect(http, server.url, A.key)
    offer = c.hello["siwe"]
    assert (offer["domain"], offer["uri"], offer["chain_id"], offer["version"]) == (host, f"ws://{host}/ws", 1337,
                                                                                    "1")
    assert siwe.parse_time(offer["expiration_time"]) - siwe.parse_time(offer["issued_at"]) == timedelta(minutes=10)
    other = await WSClient.connect(http, server.url, A.key)
    now = datetime.now(UTC)

    async def refused(changes: dict, code: str, signer=A, key=A) -> None:
        text = siwe_text(offer, key.address, **changes)
        r = await c.request({"type": "login", "message": text, "signature": personal_sign(text, signer)})
        assert r["type"] == "error" and r["code"] == code, r

    await refused({"domain": "evil.example"}, "SIWE_WRONG_DOMAIN")
    await refused({"nonce": other.hello["siwe"]["nonce"]}, "SIWE_NONCE_UNKNOWN")  # another connection's nonce
    await refused({"expiration_time": _t(now - timedelta(seconds=1))}, "SIWE_EXPIRED")
    await refused({}, "BAD_SIGNATURE", signer=B)
    await c.ws.close()  # five failed logins close a connection: go on with a fresh one
    c = other
    offer = c.hello["siwe"]
    await refused({}, "UNKNOWN_MEMBER", signer=OUTSIDER, key=OUTSIDER)
    r = await c.request({"type": "login", "message": "not siwe", "signature": "0x" + "11" * 65})
    assert r["code"] == "SIWE_INVALID"
    r = await c.login()
    assert r["result"]["member"] == A.address and r["result"]["auth"] == "siwe"
    assert (await c.login())["code"] == "ALREADY_AUTHENTICATED"
    # deprecated, kept for one more version: the challenge signed with the address
    d = await WSClient.connect(http, server.url, B.key)
    r = await d.login_challenge()
    assert r["result"]["member"] == B.address and r["result"]["auth"] == "challenge"
    await asyncio.gather(c.ws.close(), d.ws.close())
