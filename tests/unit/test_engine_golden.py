"""Golden digests of the engine's output: the journal's bytes (every event as the journal encodes
it, orjson of ``event_to_dict``), the state hash along the way and the exported snapshot, for
seeded command streams over several market configurations. A change to the engine that is meant
to be pure performance work must leave every digest as it is.

The digests were computed with the engine of commit b54885c (before the hot-path work of
issue 13's engine bench). A deliberate change of behaviour changes them: recompute them
(``_digest`` below) and say why in the commit."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import orjson
import pytest

from exchange.core.calendar import GateMode
from exchange.core.controls import PriceControls
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import (
    BlockAccepted,
    CancelAll,
    CancelOrder,
    Command,
    Halt,
    Mechanism,
    ModifyOrder,
    OrderAccepted,
    PlaceBlock,
    PlaceOrder,
    RegisterMember,
    Resume,
    SelfTradePrevention,
    Side,
    Tick,
    TimeInForce,
    UpdateCollateral,
    event_to_dict,
)

pytestmark = pytest.mark.unit

T0 = 1_795_248_000_000_000  # 2026-11-21 08:00 UTC (the benchmarks' start)
HOUR = 3_600_000_000

CONTROLS = PriceControls(price_band_bp=500, price_band_min_ticks=300, max_order_value=3 * 10**9, volatility_bp=300,
                         volatility_min_ticks=200, volatility_auction_s=2, otr_max=2, otr_free=5)
_BASE = MarketConfig()
_ROLLING = replace(_BASE.calendar, gate=GateMode.ROLLING)
CONFIGS = {
    "continuous": _BASE,
    "controls-cancel-oldest": replace(_BASE, controls=CONTROLS, self_trade_prevention=SelfTradePrevention.CANCEL_OLDEST),
    "controls-cancel-both": replace(_BASE, controls=CONTROLS, self_trade_prevention=SelfTradePrevention.CANCEL_BOTH),
    "allow-self-trade": replace(_BASE, self_trade_prevention=SelfTradePrevention.ALLOW),
    "controls-no-otr": replace(_BASE, controls=replace(CONTROLS, otr_max=0)),  # as a new market's defaults
    "call": replace(_BASE, mechanism=Mechanism.CALL, controls=CONTROLS),
    "call-then-continuous": replace(_BASE, mechanism=Mechanism.CALL_THEN_CONTINUOUS, calendar=_ROLLING,
                                    controls=CONTROLS),
    "old-rules": replace(_BASE, nonce_first=False, quiet_rejections=False, coid_terms=False, controls=CONTROLS),
    "no-risk-checks": replace(_BASE, risk_checks=False, quantity_step=10, min_quantity=20, controls=CONTROLS),
}

# config -> (sha-256 of the journal's event bytes, events, state hash at the end, sha-256 of the
# state hashes every 250 commands, sha-256 of the exported state)
GOLDEN = {
    "allow-self-trade": (
        'bf3a607743c971bdb2e8051a7914e81ab0abf47cc383cd346c8c6b1206f83671',
        4524,
        'b7ba5c8d453cac99c55765518f0f248ffdc292ea4594773ad2314c66ba420da7',
        'e7cc249158ce35016cf7ec25d369ac9ea1c294f36202157bff3f3d57701f705f',
        '2e6a8a28bd7d5289c11742eff87e8acb7dc24668558dbe75fb193baf0201628b',
    ),
    "call": (
        'b7b5e0d1dff14a0dee4cbe27b4665c31b7f1e64271ba44eb9764aeb5bf13c6da',
        4163,
        'f5c3787a64e264c4bf166bea4834e1e42cd66ab2c0b3ba1c50636a2d33a2c031',
        'e4d01a437a0869070e43dcafc3be0bb14b9baf7ae81aaa089fd8a8d4d3999d91',
        'bff9ac68d889954daaa337c743ba0785484b4b80c0095a654b4903c537afa7d1',
    ),
    "call-then-continuous": (
        'dab5207594fd0a1164d5c2f5a7de4141da2455a8fba70d097de9e0e87d28d8f2',
        4468,
        '06f5324233bcb7caa24364c30d700004aa747f7fc24a070637f520f3444b3308',
        '9b356060efbae45fb2f9c36ef9f082668ecc7c5c9a61a175dee454951d532005',
        'd79d99ba630e1bff4241b0aa53c271bf3a7107b6500594feac427b08f6d9048d',
    ),
    "continuous": (
        'b9d72dcc6e02b449f259e1cc713432fa24c8e87b98cb08696af689d8e422cc81',
        4447,
        '9697628da68d4b6486f01e55ca989d8326834fe08537106c053759b09cd0c7a8',
        '179de91005e5d9a3dae2aaaf31998ad10864833e67ddc957715d7b250a712a18',
        'ae6ba5365eab5ea1c1c7bfc1b6cd9d770770b81b501f8a01d3412bada0bc8299',
    ),
    "controls-cancel-both": (
        'cd47e23b0fbb35de54c02e3a488af338c6d462dd945925ffc8d5ad15be55a160',
        4445,
        '10e9be2405880fc53dbff46e41fb281d54bdf73df88086fa28d055603cece6d7',
        'b82f60501e592b723ebd75d070bc170e025ee3af2f11824fae95dfb3a5192746',
        '709eb4331a55bab2b3dfaeac2b2a24372f93c71da6a9e6edd748a1a2203a813d',
    ),
    "controls-cancel-oldest": (
        '1a24c462277a66273c66f6c20d731748853f7ff28bb9cf119039cf73c7088a5f',
        4452,
        '3893ee0db77142e0f6b7721f10a10be2d12a6e2c06be53ef460392a4323970eb',
        '0c54442241b68357bde27dcf5d4da1ab1d33413c9c7806010e0cc17fd3d54f3a',
        'd9b875e597091a53d6d343657263ceef208f94fa8dd09eb0e79d45aa1e6c510e',
    ),
    "controls-no-otr": (
        '39d712241c966275f2e8bf1a1796afb71e8cd4788b80af89d40839df595cf152',
        4454,
        'd6212959ed707ee759f588c037c3964c3487c9feee15fc6a5265f47a25cb9afb',
        '508ba713c47c543bead10fefa5aaef1d9fbd8912e2c46ac23365ad6e956d7f29',
        'e37157f9228e4469bb5ee22a46689e6a362215758a12835480303b05abfacb13',
    ),
    "no-risk-checks": (
        '34f4282bd14e63d40c5cd11600667bbe2ba86d6a341c6568150df9405f851335',
        4251,
        '6177305784ce206639cdaf0af567e07d4443a52d694973c587629b2c8080a7af',
        '97cc6d432079857cf293495f5c5fdc266d3522ed0ec16f635ca5d6e06ea5e78e',
        '0ab92d1d82abdee4123e2950a0deca1808f06d5b23a1d3ac6cda55c51151f000',
    ),
    "old-rules": (
        '81ce11ef4a20d0512a1b5277213886554c62e159649e1000a59980bbdb8ef5b8',
        4335,
        '8b6233dc1b0c6b7b6a7bfa2278fed1725c9ee51e2b7d3f80b9434bfef0089c53',
        'c52e974e613669709351d61dfe630dbd6ef0e7aba5cd3fc4a961c06504d70a88',
        '6d08a6d413b87b458b7829a2bbb805a571bb7d7a884ec1411ab923612a7ea9e9',
    ),
}


def stream(cfg: MarketConfig, seed: int, n: int) -> list[Command]:
    """A varied stream: every order type and rule of the engine (post-only, good till a date,
    minimum quantity, FOK, client order ids reused with the same or other terms, signed nonces,
    delegations, modifies of price and quantity, cancel-all, blocks, halts, suspensions,
    collateral updates), prices around a few references so that orders cross, the controls
    trip and products close and deliver (time jumps) -- recorded against an engine so that
    cancels and modifies name real orders."""
    r = random.Random(seed)
    e = MarketEngine(cfg)
    out: list[Command] = []

    def do(c: Command) -> list:
        out.append(c)
        return e.process(c)

    names = [MemberId(f"m{i}") for i in range(6)]
    t = T0
    collateral = [10**18, 10**18, 5 * 10**8, 3 * 10**7, 10**18, 10**9]
    capacity = [10**9, 10**9, 5000, 10**9, 300, 10**9]
    for m, c, w in zip(names, collateral, capacity):
        do(RegisterMember(t, m, collateral=c, export_capacity_w=w))
    ref: dict[ProductId, int] = {}
    placed: list[OrderId] = []
    coids: list[tuple[MemberId, str]] = []
    nonce = dict.fromkeys(names, 0)
    for i in range(n):
        t += r.choice([1, 10, 100, 1000, 10_000, 100_000, 700_000])
        if i in (n // 2, 3 * n // 4):
            t += 3 * HOUR + HOUR // 2  # gates close, auctions clear, products deliver
        prods = sorted(e.products)
        for p in prods:
            ref.setdefault(p, r.choice([8000, 8000, 0, -500, 30000]))
        live = [p for p in prods if e.products[p].state.value in ("open", "auction")] or prods
        m = r.choice(names)
        p = r.choice(live if r.random() < 0.95 else prods)
        k = r.random()
        open_ids = list(e.orders)[-200:]
        if k < 0.6:
            qty = r.choice([1, 10, 20, 50, 100, 300, 1000, 10**6])
            kw: dict = {}
            x = r.random()
            if x < 0.1:
                kw["post_only"] = True
            elif x < 0.2:
                kw["expire_at"] = t + r.choice([1, 500_000, 2_000_000, -5])
            elif x < 0.28:
                kw["min_quantity"] = r.choice([1, qty // 2 or 1, qty, qty + 1])
            if r.random() < 0.15:
                if coids and r.random() < 0.4:
                    m, kw["client_order_id"] = r.choice(coids)
                else:
                    kw["client_order_id"] = f"c{i}"
                    coids.append((m, f"c{i}"))
            if r.random() < 0.1:
                nonce[m] += r.choice([1, 1, 0, -1])
                kw["nonce"], kw["signature"] = nonce[m], "0xsig"
            if r.random() < 0.05:
                kw["delegation"] = "0xdel"
            price = ref[p] + r.randint(-60, 60) if r.random() > 0.02 else r.choice([10**7, -40_000, -60_000])
            side = r.choice([Side.BUY, Side.SELL])
            last = e.products[p].ref_price
            if last is not None and r.random() < 0.1:  # at the edge of the band or of the volatility range
                edge = max(CONTROLS.price_band_min_ticks, abs(last) * CONTROLS.price_band_bp // 10_000) \
                    if r.random() < 0.5 else \
                    max(CONTROLS.volatility_min_ticks, abs(last) * CONTROLS.volatility_bp // 10_000)
                price = last + (1 if side is Side.BUY else -1) * (edge + r.choice([0, 1]))
            tif = r.choice([TimeInForce.GTC] * 4 + [TimeInForce.IOC, TimeInForce.FOK])
            evs = do(PlaceOrder(t, m, p, side, price, qty if r.random() > 0.01 else 0, tif, **kw))
        elif k < 0.72 and placed:
            oid = r.choice(open_ids) if open_ids and r.random() < 0.85 else r.choice(placed)
            o = e.orders.get(oid) or e.blocks.get(oid)
            evs = do(CancelOrder(t, o.member if o and r.random() < 0.9 else m, oid))
        elif k < 0.86 and placed:
            oid = r.choice(open_ids) if open_ids and r.random() < 0.85 else r.choice(placed)
            o = e.orders.get(oid)
            evs = do(ModifyOrder(t, o.member if o and r.random() < 0.9 else m, oid,
                                 price=None if r.random() < 0.5 else ref[p] + r.randint(-60, 60),
                                 quantity=None if r.random() < 0.3 else r.choice([1, 10, 50, 200])))
        elif k < 0.88:
            evs = do(CancelAll(t, m, r.choice([None, p]), by_operator=r.random() < 0.3))
        elif k < 0.9:
            size = r.randint(2, 5)
            s = r.randrange(len(prods) - size)
            hours = prods[s:s + size]
            side = r.choice([Side.BUY, Side.SELL])
            limit = sum(ref[h] for h in hours) // size + (1 if side is Side.BUY else -1) * r.randint(-50, 300)
            evs = do(PlaceBlock(t, m, hours, side, limit, r.choice([10, 100]),
                                client_order_id=f"b{i}" if r.random() < 0.3 else None))
        elif k < 0.905:
            evs = do(Halt(t, "x") if r.random() < 0.3 else Resume(t))
            if e.halted and r.random() < 0.7:
                evs = do(Resume(t))
        elif k < 0.91:
            evs = do(RegisterMember(t, m, collateral=r.choice([None, 10**18, 10**6]),
                                    export_capacity_w=r.choice([0, 10**9]), suspended=r.random() < 0.1))
            if r.random() < 0.8:
                do(RegisterMember(t, m, collateral=None, export_capacity_w=10**9))
        elif k < 0.915:
            evs = do(UpdateCollateral(t, m, collateral=r.choice([10**18, 10**7]), settled_payable=r.randint(0, 10**6),
                                      settlement_ref=r.randint(0, 5), withdrawal=r.choice([0, 10])))
        else:
            evs = do(Tick(t))
        placed += [ev.order_id for ev in evs if type(ev) in (OrderAccepted, BlockAccepted)]
        del placed[:-300]
    return out


def _digest(cfg: MarketConfig, commands: list[Command]) -> tuple[str, int, str, str, str]:
    e = MarketEngine(cfg)
    journal = hashlib.sha256()
    hashes = hashlib.sha256()
    n = 0
    for i, c in enumerate(commands):
        for ev in e.process(c):
            journal.update(orjson.dumps(event_to_dict(ev)))
            n += 1
        if i % 250 == 0:
            hashes.update(e.state_hash().encode())
    state = json.dumps(e.export_state(), separators=(",", ":")).encode()
    return journal.hexdigest(), n, e.state_hash(), hashes.hexdigest(), hashlib.sha256(state).hexdigest()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_output_is_byte_identical_to_the_golden_digests(name):
    cfg = CONFIGS[name]
    assert _digest(cfg, stream(cfg, 4, 4000)) == GOLDEN[name]
