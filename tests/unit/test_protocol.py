"""Protocol models: the published schema is current, and parsing is strict and precise."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.paths import DOCS

from exchange.gateway.plugin import wire_protocol
from exchange.protocol.frames import read_request_id
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
