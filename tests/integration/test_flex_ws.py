"""The flexibility messages over the peer WebSocket (SDK client, one real server at
2026-11-22 12:00 UTC): validation and the service's refusals. (The whole demand-response
event is tests/e2e/test_flex_e2e.py.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support.keys import KEYS
from support.server import member

from clients.sdk.client import VoltbourseClient
from clients.sdk.errors import RequestError
from exchange.runtime.clock import ManualClock

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def test_ws_validation_and_errors(serve):
    async with serve(market_id="flex-ws", clock=ManualClock(T),
                     members=[member(KEYS[0], collateral=0, export_capacity_w=0)]) as server:
        c = VoltbourseClient(server.url, KEYS[0].key, reconnect=False)
        await c.connect()
        try:
            async def code(msg):
                with pytest.raises(RequestError) as e:
                    await c.request(msg)
                return e.value.code

            assert await code({"type": "flex_offer", "period_start": "2026-11-22T14:00:00", "direction": "up",
                               "power_w": 1, "price": 1}) == "INVALID_MESSAGE"  # naive time
            assert await code({"type": "flex_offer", "period_start": "2026-11-22T14:05:00Z", "direction": "up",
                               "power_w": 1, "price": 1}) == "INVALID_PERIOD"
            assert await code({"type": "flex_offer", "period_start": "2026-11-22T11:00:00Z", "direction": "up",
                               "power_w": 1, "price": 1}) == "PERIOD_STARTED"
            assert await code({"type": "flex_offer", "period_start": "2026-11-22T14:00:00Z", "direction": "up",
                               "power_w": 1.5, "price": 1}) == "INVALID_MESSAGE"
            assert await code({"type": "flex_respond", "invitation_id": 99, "accept": True}) == "UNKNOWN_INVITATION"
            assert await code({"type": "flex_offer_cancel", "offer_id": 99}) == "UNKNOWN_OFFER"
            assert await code({"type": "flex_meter", "readings": [{"interval_start": "2026-11-22T12:00:00Z",
                                                                    "consumption_wh": 5}]}) == "INTERVAL_NOT_OVER"
            r = await c.request({"type": "flex_offer", "period_start": "2026-11-22T14:00:00Z", "direction": "up",
                                 "power_w": 6000, "duration_minutes": 30, "price": 9000})
            assert r["offer"]["energy_wh"] == 3000
            st = await c.request({"type": "flex_status"})
            assert [o["offer_id"] for o in st["offers"]] == [r["offer"]["offer_id"]]
            assert (await c.request({"type": "flex_offer_cancel", "offer_id": r["offer"]["offer_id"]}))["status"] == \
                "cancelled"
            # delivery is baseline minus meter: a baseline is declared ahead, once per slot; a meter
            # value once per interval (a member raised its baseline, or lowered its meter, after the fact)
            def slot(t: str, wh: int = 100) -> dict:
                return {"start": t, "consumption_wh": wh}
            for slots in ([slot("2026-11-21T11:45:00Z")],  # more than a day ago
                          [slot("2026-12-30T12:00:00Z")],  # more than 31 days ahead
                          [slot("2026-11-22T15:00:00Z"), slot("2026-11-22T15:00:00Z", 900)]):  # twice
                assert await code({"type": "flex_baseline", "slots": slots}) == "INVALID_SLOT", slots
            ok = await c.request({"type": "flex_baseline", "slots": [slot("2026-11-22T15:00:00Z")]})
            assert ok["slots"] == 1
            server.market.runtime.clock.set(datetime(2026, 11, 22, 12, 30, tzinfo=UTC))
            reading = {"interval_start": "2026-11-22T12:00:00Z", "consumption_wh": 5}
            assert (await c.request({"type": "flex_meter", "readings": [reading]}))["readings"] == 1
            for readings in ([dict(reading, consumption_wh=1)],  # again, later
                             [{"interval_start": "2026-11-22T12:10:00Z", "consumption_wh": 5},
                              {"interval_start": "2026-11-22T12:10:00Z", "consumption_wh": 1}]):  # twice
                assert await code({"type": "flex_meter", "readings": readings}) == "INVALID_INTERVAL", readings
        finally:
            await c.close()
