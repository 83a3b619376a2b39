"""Protocol models: the published schema is current, and parsing is strict and precise."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.paths import DOCS

from exchange.gateway.plugin import wire_protocol
from exchange.protocol.frames import json_nul_location, nul_location, read_request_id
from exchange.protocol.messages import CORE_REQUESTS, ProtocolError, WireProtocol, message_type
from exchange.tools.platform import subsystems

pytestmark = pytest.mark.unit

PROTOCOL = wire_protocol(subsystems())  # the core messages and every installed subsystem's
parse = PROTOCOL.parse
SERVER_MESSAGE = PROTOCOL.server_adapter


def test_published_schema_is_current():
    assert json.loads((DOCS / "ws-schema.json").read_text()) == json.loads(json.dumps(PROTOCOL.json_schema())), \
        "regenerate: voltbourse docs"


def test_schema_covers_every_client_message():
    names = set(PROTOCOL.json_schema()["client_to_server"]["discriminator"]["mapping"])
    assert names == set(PROTOCOL.types)
    assert {message_type(m) for m in CORE_REQUESTS} <= names
    assert {"login", "place", "cancel", "modify", "cancel_all", "orders", "trades", "positions",
            "subscribe", "unsubscribe", "ping", "trade_proof"} <= names


@pytest.mark.parametrize("raw,code", [
    ("", "MALFORMED_JSON"),
    ("nul", "MALFORMED_JSON"),
    ('{"type":"place","id":1,"product_id":"p","side":"buy","price":1,"quantity":1,"signature":"0x' + "ab" * 65 + '"}',
     "INVALID_MESSAGE"),
    ('{"type":"ping","id":-1}', "INVALID_MESSAGE"),
    ('{"type":"ping","id":""}', "INVALID_MESSAGE"),
    ('{"type":"trades","id":1,"limit":5000}', "INVALID_MESSAGE"),
])
def test_precise_codes(raw, code):
    with pytest.raises(ProtocolError) as e:
        parse(raw)
    assert e.value.code == code


def test_valid_place_round_trip():
    m = parse('{"type":"place","id":"a","product_id":"20261122T1100Z-60","side":"sell","price":-500,'
              '"quantity":1000,"tif":"fok","client_order_id":"x.1"}')
    assert (m.side, m.price, m.quantity, m.tif) == ("sell", -500, 1000, "fok")


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_protocol_error(text):
    try:
        parse(text)
    except ProtocolError as e:
        assert e.code in {"MALFORMED_JSON", "INVALID_MESSAGE", "UNKNOWN_TYPE"} and e.message


def test_server_message_examples_validate():
    for msg in [
        {"type": "error", "id": None, "code": "MALFORMED_JSON", "message": "x"},
        {"type": "book", "product_id": "p", "seq": 5, "prev_seq": 3, "changes": [["buy", 100, 0, 0]]},
        {"type": "execution", "exec": "fill", "seq": 1, "ts": "t", "order_id": 1, "product_id": "p", "side": "buy",
         "price": 1, "quantity": 1, "remaining": 0, "trade_id": 1, "liquidity": "taker", "counterparty": None,
         "client_order_id": None},
    ]:
        SERVER_MESSAGE.validate_python(msg)


def test_core_protocol_knows_only_core_messages():
    """Without subsystems the gateway parses only its own messages: a subsystem's
    message is an unknown type there (the gateway knows no subsystem)."""
    core = WireProtocol()
    with pytest.raises(ProtocolError) as e:
        core.parse('{"type":"trade_proof","id":1,"trade_id":1}')
    assert e.value.code == "UNKNOWN_TYPE"
    assert core.parse('{"type":"ping","id":1}').type == "ping"


def test_a_message_type_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        WireProtocol([*CORE_REQUESTS, CORE_REQUESTS[-1]])


# request ids read from frames orjson refuses (the gateway answers them with that id)
@pytest.mark.parametrize("frame,rid", [
    ('{"type":"ping","id":"a"}', "a"),
    ('{"type":"place","id":7,"price":1e309}', 7),
    ('{"id":"x","type":"ping","p":NaN}', "x"),
    ('{"type":"ping","id":"deep","q":' + "[" * 3000 + "]" * 3000 + "}", "deep"),
    ('{"type":"ping","x":123456789012345678901234567890,"id":5}', 5),
    ('{"a":{"id":1},"id":"top"}', "top"),
    ('{"b":"}\\"","id":9}', 9),
    ("[1,2]", None),
    ('{"id":-1}', None),
    ('{"id":"' + "x" * 65 + '"}', None),
])
def test_request_id_is_read_from_frames_orjson_refuses(frame, rid):
    assert read_request_id(frame) == rid


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=20)


def _contains_nul(v: object) -> bool:
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(_contains_nul(k) or _contains_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_contains_nul(x) for x in v)
    return False


def _at(v: object, loc: tuple) -> object:
    for k in loc:
        v = v[k]  # type: ignore[index]
    return v


@given(_JSON)
def test_nul_location_finds_a_nul_exactly_when_there_is_one(value):
    loc = nul_location(value)
    assert (loc is not None) == _contains_nul(value)
    text = json.dumps(value)
    assert json_nul_location(text) == loc == json_nul_location(text.encode())
    if loc is not None:  # it names the string that holds it, or a key that does (its last part)
        key = bool(loc) and isinstance(loc[-1], str) and "\x00" in loc[-1]
        assert key or "\x00" in _at(value, loc)  # type: ignore[operator]


def test_a_nul_frame_is_refused_naming_the_field_with_its_id():
    p = WireProtocol(CORE_REQUESTS)
    with pytest.raises(ProtocolError) as e:
        p.parse('{"type": "ping", "id": "r1", "x": ["ok", "a\\u0000"]}')
    assert e.value.code == "INVALID_MESSAGE" and e.value.request_id == "r1" and e.value.message.startswith("x.1:")
    with pytest.raises(ProtocolError) as e:
        p.parse('{"type": "ping", "id": 7, "\\u0000": 1}')
    assert e.value.request_id == 7 and "NUL" in e.value.message
    assert json_nul_location('"back\\\\u0000slash"') is None  # an escaped backslash, then u0000: no NUL
    assert json_nul_location(b'{"a": "\\u0000') is None  # not JSON: its parser answers
