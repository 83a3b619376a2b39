"""The member portal of a hosted community (/m/{id}/portal): its page points at its own
files, API and WebSocket; sign-in gives a cookie of its own (name and path), which signs
the member in on that community's WebSocket only, and is nothing at the root or in another
community. Real PostgreSQL, one deployment with hosted markets."""

from __future__ import annotations

import pytest
from support.keys import KEYS
from test_platform import call, member, platform_env  # noqa: F401 - the fixture
from test_portal_auth import signed

pytestmark = pytest.mark.integration


async def test_a_hosted_communitys_portal_is_its_own(platform_env):  # noqa: F811
    d, http, base, tokens = platform_env
    await member(http, base + "/m/a", tokens["a"], KEYS[0].address)
    st, page = await call(http, "GET", f"{base}/m/a/portal", headers={})
    assert st == 200 and 'content="/m/a"' in page and 'src="/m/a/portal/static/portal.js"' in page
    # the page's modules import the operator page's exact formatting from beside it
    async with http.get(f"{base}/m/a/operator/static/format.js") as r:
        assert r.status == 200 and "roundHalfEven" in await r.text()
    st, root_page = await call(http, "GET", f"{base}/portal", headers={})
    assert st == 200 and 'content=""' in root_page
    st, offer = await call(http, "GET", f"{base}/m/a/portal/siwe/nonce", headers={})
    assert st == 200 and offer["uri"].endswith("/m/a/portal")
    # a sign-in whose URI names another community's portal (or the root's) is refused, with a
    # nonce of this one
    for uri in (f"{base}/m/b/portal", f"{base}/portal"):
        st, other = await call(http, "GET", f"{base}/m/a/portal/siwe/nonce", headers={})
        async with http.post(f"{base}/m/a/portal/siwe/login", json=signed(other, KEYS[0], uri=uri),
                             headers={"Origin": base}) as r:
            body = await r.json()
            assert r.status == 401 and body["error"] == "SIWE_WRONG_DOMAIN" and "endpoint" in body["message"], body
    async with http.post(f"{base}/m/a/portal/siwe/login", json=signed(offer, KEYS[0]),
                         headers={"Origin": base}) as r:
        assert r.status == 200, await r.text()
        cookie = next(h for h in r.headers.getall("Set-Cookie") if h.startswith("vb_portal_a="))
    assert "Path=/m/a/" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    sid = cookie.split(";")[0].split("=", 1)[1]
    jar = {"Cookie": f"vb_portal_a={sid}", "Origin": base}
    st, s = await call(http, "GET", f"{base}/m/a/portal/session", headers=jar)
    assert st == 200 and s["member"] == KEYS[0].address
    # the cookie is nothing at the root or in community b
    st, _ = await call(http, "GET", f"{base}/portal/session", headers=jar)
    assert st == 401
    st, _ = await call(http, "GET", f"{base}/m/b/portal/session", headers=jar)
    assert st == 401
    # it signs the member in on a's WebSocket, not on b's
    async with http.ws_connect(f"{base.replace('http', 'ws')}/m/a/ws", headers=jar) as ws:
        hello = await ws.receive_json()
        assert hello["member"] == KEYS[0].address and hello["auth"] == "portal"
    async with http.ws_connect(f"{base.replace('http', 'ws')}/m/b/ws", headers=jar) as ws:
        hello = await ws.receive_json()
        assert hello.get("member") is None
