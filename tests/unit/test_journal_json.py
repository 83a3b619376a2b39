"""The journal encodes commands and events straight from their dataclasses
(exchange.runtime.journal.command_json / events_json): the JSON must be exactly
command_to_dict's and event_to_dict's objects, keys in the same order, for every type,
since replay compares what it produces with them."""

from __future__ import annotations

import typing
from dataclasses import fields

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.times import T0

from exchange.core import model
from exchange.core.engine import MarketEngine
from exchange.runtime.config import Settings
from exchange.runtime.journal import command_json, events_json
from exchange.runtime.service import market_config
from exchange.tools import workload

pytestmark = pytest.mark.unit

CLASSES = [*model.COMMANDS.values(), *model.EVENTS.values()]


def _instances(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: st.from_type(hints[f.name]) for f in fields(cls) if f.init})


def _as_dict(obj: object) -> dict:
    return model.command_to_dict(obj) if isinstance(obj, model.Command) else model.event_to_dict(obj)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.type)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_type_encodes_as_its_dict(cls, data):
    obj = data.draw(_instances(cls))
    try:
        want = orjson.dumps(_as_dict(obj))
    except TypeError:  # e.g. an integer beyond 64 bits: refused either way
        with pytest.raises(TypeError):
            command_json(obj) if isinstance(obj, model.Command) else events_json([obj])
        return
    got = command_json(obj).text if isinstance(obj, model.Command) else events_json([obj]).text[1:-1]
    assert got == want  # the same text: the same keys, in the same order, the same values
    if isinstance(obj, model.Event):
        assert events_json([obj, obj]).value() == [_as_dict(obj)] * 2


def test_the_bench_order_flow_encodes_as_its_dicts():
    engine = MarketEngine(market_config(Settings()))
    names = workload.members(50)
    t = T0
    for c in workload.registrations(names, t):
        engine.process(c)
    flow = workload.OrderFlow(sorted(pid for pid, pb in engine.products.items() if pb.state.value == "open"), names,
                              seed=3, first_order_id=engine.next_order_id)
    kinds = set()
    for cmd in flow.stream(3000, t + 1):
        events = engine.process(cmd)
        flow.observe(events)
        assert command_json(cmd).text == orjson.dumps(model.command_to_dict(cmd))
        assert events_json(events).text == orjson.dumps([model.event_to_dict(ev) for ev in events])
        kinds.update(type(ev).type for ev in events)
    assert {"order_accepted", "trade"} <= kinds
    assert events_json([]).text == b"[]"
