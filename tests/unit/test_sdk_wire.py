"""The SDK's pure half, without a socket: the wire helpers (shared by the asyncio client
and the Locust user) and the local order book."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from support.keys import KEYS

from clients.sdk import BookDelta, BookSnapshot, LocalBook, OrderRejected, OutcomeUnknown, wire
from clients.sdk.book import BookGap
from exchange.protocol import auth

pytestmark = pytest.mark.unit


def test_wire_builds_signs_and_reads_without_a_socket():
    """The pure half shared by the asyncio client and the Locust user (loadtest/locustfile.py)."""
    hello = wire.read_hello(wire.encode({"type": "hello", "protocol": 1, "market_id": "m", "challenge": "sign me",
                                         "server_time": "2026-11-22T10:00:00Z", "eip712_domain": {"chainId": 1337}}))
    login = wire.login(1, hello, KEYS[0])
    assert auth.recover_login("sign me", login["signature"]) == KEYS[0].address == login["address"]
    assert wire.subscribe(2, "trades") == {"type": "subscribe", "id": 2, "channel": "trades"}
    with pytest.raises(ValidationError):
        wire.cancel(3, order_id=0)
    # signed orders: EIP-712 over the order's fields, nonces that only grow
    nonces = wire.Nonces(start=5)
    signer = wire.OrderSigner(wire.account(KEYS[0].key.hex()), hello, nonces)
    msg = wire.place(4, "20261122T1100Z-60", "buy", 8550, 2500, client_order_id="c-1", signer=signer)
    typed = auth.order_typed_data("m", 1337, product_id="20261122T1100Z-60", side="buy", price=8550, quantity=2500,
                                  tif="gtc", client_order_id="c-1", nonce=5)
    assert msg["nonce"] == 5 and auth.recover_order_signer(typed, msg["signature"]) == KEYS[0].address
    assert wire.place(5, "20261122T1100Z-60", "sell", 1, 1, signer=signer)["nonce"] == 6 == nonces.last
    # answers
    assert wire.answer_id({"type": "book", "id": 4}) is None and wire.answer_id({"type": "response", "id": 4}) == 4
    assert wire.result_of(wire.decode(b'{"type": "response", "id": 4, "result": {"order_id": 9}}')) == {"order_id": 9}
    with pytest.raises(OrderRejected) as e:
        wire.result_of({"type": "error", "id": 4, "code": "PRODUCT_CLOSED", "message": "closed"}, msg)
    assert (e.value.code, e.value.request) == ("PRODUCT_CLOSED", msg)
    assert wire.order_result({"order_id": 9, "status": "resting"}, msg).order_id == 9
    with pytest.raises(OutcomeUnknown):
        wire.order_result({"seq": 3}, msg)


def test_local_book_follows_deltas_and_stops_at_a_gap():
    book = LocalBook("p")
    delta = BookDelta(type="book", product_id="p", seq=3, prev_seq=2, changes=[("buy", 100, 5, 1)])
    assert not book.follow(delta)  # no snapshot yet: the one to come includes it
    book.reset(BookSnapshot(type="book_snapshot", product_id="p", seq=2, bids=[(90, 7, 2)], asks=[(120, 1, 1)]))
    assert book.follow(delta) and (book.best_bid(), book.mid(), book.seq) == (100, 110, 3)
    assert not book.follow(delta)  # stale
    with pytest.raises(BookGap):
        book.follow(BookDelta(type="book", product_id="p", seq=6, prev_seq=5, changes=[]))
    assert not book.synced and book.depth("buy") == [(100, 5, 1), (90, 7, 2)]
