"""Sign-In with Ethereum (EIP-4361) messages (exchange.protocol.siwe): built and parsed back
(property), the specification's example, every malformed field refused by name, and the
server's checks (domain, URI host, scheme, chain, times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.keys import KEYS

from clients.sdk import wire
from exchange.protocol import auth, siwe
from exchange.protocol.errors import CATALOGUE, VoltbourseError

pytestmark = pytest.mark.unit

ADDR = KEYS[0].address
T = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)

# the example of EIP-4361, byte for byte
SPEC_EXAMPLE = """service.org wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ServiceOrg Terms of Service: https://service.org/tos

URI: https://service.org/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""


def msg(**changes) -> siwe.SiweMessage:
    f = dict(domain="127.0.0.1:8080", address=ADDR, uri="http://127.0.0.1:8080/portal", chain_id=1337,
             nonce="a1b2c3d4e5f6a7b8", issued_at=T, statement="Sign in to the Voltbourse member portal.",
             expiration_time=T + timedelta(minutes=10))
    f.update(changes)
    return siwe.SiweMessage(**f)


def test_the_specification_example_parses_and_rebuilds_exactly():
    m = siwe.parse(SPEC_EXAMPLE)
    assert (m.domain, m.address, m.chain_id, m.nonce) == ("service.org", "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                                                          1, "32891756")
    assert m.statement == "I accept the ServiceOrg Terms of Service: https://service.org/tos"
    assert m.issued_at == datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)
    assert m.resources == ("ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                           "https://example.com/my-web2-claim.json")
    assert m.text() == SPEC_EXAMPLE


def test_layout_without_statement_and_with_every_optional_field():
    m = msg(statement=None, not_before=T, request_id="req-1", resources=(), scheme="https")
    text = m.text()
    assert text.startswith(f"https://127.0.0.1:8080 wants you to sign in with your Ethereum account:\n{ADDR}\n\n\n"
                           "URI: ")
    assert text.endswith("Expiration Time: 2026-11-21T18:10:00Z\nNot Before: 2026-11-21T18:00:00Z\n"
                         "Request ID: req-1\nResources:")
    assert siwe.parse(text) == m


_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=40)
_statement_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?#[]@!$&'()*+,;= "
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2199, 12, 31),
                      timezones=st.just(UTC))
_hosts = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){0,2}(:[0-9]{1,5})?", fullmatch=True)
_uris = st.builds(lambda s, h, p: f"{s}://{h}/{p}", st.sampled_from(["http", "https", "ws", "wss"]), _hosts,
                  st.from_regex(r"[A-Za-z0-9\-._~/]{0,20}", fullmatch=True))


@given(domain=_hosts, key=st.sampled_from(KEYS), uri=_uris, chain_id=st.integers(1, 2**64),
       nonce=_alnum, issued=_times,
       statement=st.none() | st.text(alphabet=_statement_chars, min_size=1, max_size=80),
       expiration=st.none() | _times, not_before=st.none() | _times,
       request_id=st.none() | st.from_regex(r"[A-Za-z0-9\-._~:@!$&'()*+,;=]{0,30}", fullmatch=True),
       resources=st.none() | st.lists(_uris, max_size=3).map(tuple),
       scheme=st.none() | st.sampled_from(["http", "https"]))
def test_round_trip(domain, key, uri, chain_id, nonce, issued, statement, expiration, not_before, request_id,
                    resources, scheme):
    m = siwe.SiweMessage(domain=domain, address=key.address, uri=uri, chain_id=chain_id, nonce=nonce,
                         issued_at=issued, statement=statement, expiration_time=expiration, not_before=not_before,
                         request_id=request_id, resources=resources, scheme=scheme)
    text = m.text()
    assert siwe.parse(text) == m
    assert siwe.parse(text).text() == text


@given(offset_min=st.integers(-23 * 60 - 59, 23 * 60 + 59), frac=st.sampled_from(["", ".5", ".123456", ".123456789"]))
def test_times_with_offsets_and_fractions_are_read_in_utc(offset_min, frac):
    sign = "+" if offset_min >= 0 else "-"
    off = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = msg().text().replace("Issued At: 2026-11-21T18:00:00Z", f"Issued At: 2026-11-21T18:00:00{frac}{off}")
    got = siwe.parse(text).issued_at
    micro = int((frac[1:] or "0").ljust(6, "0")[:6])
    assert got == T.replace(microsecond=micro) - timedelta(minutes=offset_min) and got.tzinfo is UTC


GOOD = msg().text()


@pytest.mark.parametrize(("text", "field", "reason"), [
    (GOOD.replace(" wants you to sign in", " want you to sign in"), "domain", "the first line"),
    (GOOD.replace("127.0.0.1:8080 wants", "exa mple.org wants"), "domain", "authority"),
    (GOOD.replace("127.0.0.1:8080 wants", " wants"), "domain", "authority"),
    (GOOD.replace("127.0.0.1:8080 wants", "1http://127.0.0.1:8080 wants"), "scheme", "scheme"),
    (GOOD.replace(ADDR, ADDR.lower()), "address", "EIP-55"),
    (GOOD.replace(ADDR, ADDR[:-1]), "address", "40 hex digits"),
    (GOOD.replace(ADDR, "alice.eth"), "address", "40 hex digits"),
    (GOOD.replace(f"{ADDR}\n\n", f"{ADDR}\n"), "message", "blank line after the address"),
    (GOOD.replace("portal.\n\nURI", "portal.\nURI"), "message", "blank line after the statement"),
    (GOOD.replace("member portal.", "member portal \"now\"."), "statement", "RFC 3986"),
    (GOOD.replace("URI: http://127.0.0.1:8080/portal", "URI: not a uri"), "URI", "RFC 3986 URI"),
    (GOOD.replace("URI: http://127.0.0.1:8080/portal", "URL: http://127.0.0.1:8080/portal"), "URI", "URI: "),
    (GOOD.replace("Version: 1", "Version: 2"), "Version", "must be 1"),
    (GOOD.replace("Chain ID: 1337", "Chain ID: 0x539"), "Chain ID", "positive integer"),
    (GOOD.replace("Chain ID: 1337", "Chain ID: 01337"), "Chain ID", "leading zeros"),
    (GOOD.replace("Chain ID: 1337", "Chain ID: 0"), "Chain ID", "positive integer"),
    (GOOD.replace("Nonce: a1b2c3d4e5f6a7b8", "Nonce: a1b2c3d"), "Nonce", "8-128 letters and digits"),
    (GOOD.replace("Nonce: a1b2c3d4e5f6a7b8", "Nonce: a1b2c3d4-e5f6"), "Nonce", "letters and digits"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 2026-11-21 18:00:00Z"), "Issued At", "RFC 3339"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 2026-11-21T18:00:00"), "Issued At", "RFC 3339"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 2026-02-30T18:00:00Z"), "Issued At", "valid"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 2026-11-21T18:00:60Z"), "Issued At", "valid"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 2026-11-21T18:00:00+24:00"), "Issued At",
     "valid"),
    # at the calendar's edges an offset takes the time out of datetime's range in UTC
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 9999-12-31T23:59:59-23:59"), "Issued At",
     "valid"),
    (GOOD.replace("Issued At: 2026-11-21T18:00:00Z", "Issued At: 0001-01-01T00:00:00+23:59"), "Issued At",
     "valid"),
    (GOOD.replace("Expiration Time: 2026-11-21T18:10:00Z", "Expiration Time: 9999-12-31T23:59:59-00:01"),
     "Expiration Time", "valid"),
    (GOOD + "\nNot Before: 0001-01-01T00:00:00+00:01", "Not Before", "valid"),
    (GOOD.replace("Expiration Time: 2026-11-21T18:10:00Z", "Expiration Time: soon"), "Expiration Time",
     "RFC 3339"),
    (GOOD + "\nNot Before: yesterday", "Not Before", "RFC 3339"),
    (GOOD + "\nRequest ID: a b", "Request ID", "pchar"),
    (GOOD + "\nResources:\n- not a uri", "Resources", "RFC 3986 URI"),
    (GOOD + "\nResources:\n-https://x.org", "message", "unexpected line"),
    (GOOD + "\nNonce: a1b2c3d4e5f6a7b8", "Nonce", "out of order or repeated"),
    (GOOD.replace("\nExpiration Time: 2026-11-21T18:10:00Z", "") + "\nRequest ID: x\nNot Before: 2026-11-21T18:00:00Z",
     "Not Before", "out of order"),
    (GOOD + "\nExtra: 1", "message", "unexpected line"),
    (GOOD + "\n", "message", "must not end with a line break"),
    (GOOD.replace("\n", "\r\n"), "message", "no CR"),
    (GOOD.replace("Version: 1\n", ""), "Version", "expected a line 'Version: "),
    (GOOD.split("\nIssued At")[0], "Issued At", "missing"),
    (GOOD.replace("member portal", "member portál"), "message", "ASCII"),
    ("x" * 5000, "message", "longer than"),
    ("", "domain", "the first line"),
])
def test_malformed_fields_are_refused_by_name(text, field, reason):
    with pytest.raises(siwe.SiweError) as e:
        siwe.parse(text)
    assert e.value.field == field and reason in e.value.reason, str(e.value)


def test_building_refuses_what_parsing_refuses():
    for changes, field in [({"address": ADDR.lower()}, "address"), ({"statement": "two\nlines"}, "statement"),
                           ({"statement": ""}, "statement"), ({"nonce": "short"}, "Nonce"),
                           ({"chain_id": 0}, "Chain ID"), ({"version": "2"}, "Version"),
                           ({"issued_at": datetime(2026, 1, 1)}, "Issued At"), ({"uri": "/relative"}, "URI"),
                           ({"domain": "a b"}, "domain"), ({"resources": ("x y",)}, "Resources")]:
        with pytest.raises(siwe.SiweError) as e:
            msg(**changes)
        assert e.value.field == field


def _code(fn) -> str:
    with pytest.raises(VoltbourseError) as e:
        fn()
    assert CATALOGUE[e.value.code].status == 401
    return e.value.code


def test_check_domain_uri_scheme_chain_and_times():
    now = T + timedelta(minutes=1)
    ok = dict(domain="127.0.0.1:8080", chain_id=1337, now=now, scheme="http")
    siwe.check(msg(), **ok)
    siwe.check(msg(domain="127.0.0.1:8080".upper()), **ok)  # hosts compare without case
    assert _code(lambda: siwe.check(msg(), **{**ok, "domain": "evil.example:8080"})) == "SIWE_WRONG_DOMAIN"
    assert _code(lambda: siwe.check(msg(uri="http://evil.example/portal"), **ok)) == "SIWE_WRONG_DOMAIN"
    assert _code(lambda: siwe.check(msg(uri="urn:x:y"), **ok)) == "SIWE_WRONG_DOMAIN"
    assert _code(lambda: siwe.check(msg(scheme="https"), **ok)) == "SIWE_WRONG_DOMAIN"
    siwe.check(msg(scheme="http"), **ok)
    assert _code(lambda: siwe.check(msg(chain_id=1), **ok)) == "SIWE_WRONG_CHAIN"
    assert _code(lambda: siwe.check(msg(issued_at=now + timedelta(minutes=2)), **ok)) == "SIWE_NOT_YET_VALID"
    siwe.check(msg(issued_at=now + timedelta(seconds=59)), **ok)  # one minute of clock skew
    assert _code(lambda: siwe.check(msg(expiration_time=now), **ok)) == "SIWE_EXPIRED"
    assert _code(lambda: siwe.check(msg(not_before=now + timedelta(seconds=1)), **ok)) == "SIWE_NOT_YET_VALID"
    siwe.check(msg(not_before=now, expiration_time=None), **ok)
    # with a path, the URI must name that endpoint: a market's, not another market's
    siwe.check(msg(), **ok, path="/portal")
    siwe.check(msg(uri="http://127.0.0.1:8080/m/a/portal"), **ok, path="/m/a/portal")
    for uri in ("http://127.0.0.1:8080/m/b/portal", "http://127.0.0.1:8080/portal", "http://127.0.0.1:8080/m/a/",
                "http://127.0.0.1:8080/m/a/portal/", "http://127.0.0.1:8080/m/b/../a/portal"):
        assert _code(lambda u=uri: siwe.check(msg(uri=u), **ok, path="/m/a/portal")) == "SIWE_WRONG_DOMAIN"


def test_sdk_login_answers_a_siwe_offer_and_falls_back_to_the_challenge():
    offer = {"domain": "127.0.0.1:9", "uri": "ws://127.0.0.1:9/ws", "chain_id": 1337, "version": "1",
             "statement": "Sign in.", "nonce": siwe.new_nonce(), "issued_at": "2026-11-21T18:00:00Z",
             "expiration_time": "2026-11-21T18:10:00Z"}
    base = {"type": "hello", "protocol": 1, "market_id": "m", "challenge": "sign me",
            "server_time": "2026-11-21T18:00:00Z", "eip712_domain": {"chainId": 1337}}
    login = wire.login(1, wire.read_hello({**base, "siwe": offer}), KEYS[1])
    m = siwe.parse(login["message"])
    assert (m.address, m.domain, m.nonce, m.uri) == (KEYS[1].address, "127.0.0.1:9", offer["nonce"], offer["uri"])
    assert auth.recover_login(login["message"], login["signature"]) == KEYS[1].address and "address" not in login
    old = wire.login(2, wire.read_hello(base), KEYS[1])
    assert auth.recover_login("sign me", old["signature"]) == old["address"] == KEYS[1].address
