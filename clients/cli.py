"""``voltbourse client ...`` (a command-line trading client for humans) and ``voltbourse bots run``.

    voltbourse client [--url WS] [--key HEX | --key-file F | --seed S --member N] ACTION ...
        login                               log in and print the member and market
        products                            product states
        book PRODUCT [--depth N] [--follow] the order book (and its updates with --follow)
        place PRODUCT buy|sell PRICE QTY    PRICE in EUR/MWh ("85.50"), QTY in Wh ("2500") or kWh ("2.5kWh")
              [--tif gtc|ioc|fok] [--client-order-id ID] [--sign]
        modify ORDER_ID [--price P] [--quantity Q]
        cancel ORDER_ID | cancel-all [--product P]
        orders | trades [--product P] [--after SEQ] | positions
        watch                               print my execution reports as they come

    voltbourse bots run [--url WS [--operator-token T]] [--members 200] [--speed 600]
                        [--duration 150] [--strategy community|zic] [--seed S] [--json]
                        (ends with a summary and the community KPIs of the hours traded)

The key can also come from ``$VOLTBOURSE_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from decimal import Decimal, InvalidOperation

from clients.bots.runner import format_kpis, run_bots
from clients.sdk import RequestError, VoltbourseClient, VoltbourseError, member_key

DEFAULT_URL = "ws://127.0.0.1:8080/ws"


# --------------------------------------------------------------------------- parsing helpers


def parse_price(text: str) -> int:
    """EUR/MWh with at most two decimals -> integer ticks of 0.01 EUR/MWh (exact)."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a price: {text!r} (EUR/MWh, e.g. 85.50)") from None
    ticks = d * 100
    if ticks != ticks.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text}: at most two decimals (the tick is 0.01 EUR/MWh)")
    return int(ticks)


def parse_quantity(text: str) -> int:
    """``2500`` / ``2500Wh`` -> 2500 Wh; ``2.5kWh`` -> 2500 Wh (exact, integer Wh)."""
    t = text.strip().lower()
    scale = 1
    if t.endswith("kwh"):
        t, scale = t[:-3], 1000
    elif t.endswith("mwh"):
        t, scale = t[:-3], 1_000_000
    elif t.endswith("wh"):
        t = t[:-2]
    try:
        wh = Decimal(t) * scale
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a quantity: {text!r} (Wh, or e.g. 2.5kWh)") from None
    if wh != wh.to_integral_value() or wh <= 0:
        raise argparse.ArgumentTypeError(f"{text}: a positive whole number of Wh")
    return int(wh)


def fmt_price(ticks: int | None) -> str:
    if ticks is None:
        return "-"
    sign = "-" if ticks < 0 else ""
    return f"{sign}{abs(ticks) // 100}.{abs(ticks) % 100:02d}"


def fmt_wh(wh: int) -> str:
    return f"{wh} Wh" if abs(wh) < 10_000 else f"{wh // 1000}.{abs(wh) % 1000:03d} kWh"


# --------------------------------------------------------------------------- client commands


def _key(args) -> str:
    if args.key:
        return args.key
    if args.key_file:
        with open(args.key_file) as f:
            return f.read().strip()
    if args.seed is not None:
        return member_key(f"bots-{args.seed}", args.member).key.hex()  # the bots' members
    env = os.environ.get("VOLTBOURSE_KEY")
    if env:
        return env
    raise SystemExit("voltbourse client: give --key, --key-file, --seed/--member or $VOLTBOURSE_KEY")


def cmd_client(args) -> int:
    async def go() -> int:
        async with VoltbourseClient(args.url, _key(args), sign_orders=getattr(args, "sign", False),
                                    reconnect=args.action in ("watch", "book")) as c:
            return await ACTIONS[args.action](c, args)

    try:
        return asyncio.run(go())
    except RequestError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except VoltbourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, Exception) as exc:  # connection refused and friends
        if type(exc).__module__.startswith("aiohttp") or isinstance(exc, OSError):
            print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
        raise


def _out(args, obj, text: str) -> None:
    if args.json:
        print(json.dumps(obj, default=str))
    else:
        print(text)


async def a_login(c, args) -> int:
    _out(args, {"member": c.member, "market_id": c.market_id},
         f"logged in as {c.member} on market {c.market_id} ({c.url})")
    return 0


async def a_products(c, args) -> int:
    r = await c.products()
    _out(args, r.model_dump(), "\n".join(f"{p.product_id:22s} {p.state}" for p in r.products)
         + ("\n(market halted)" if r.halted else ""))
    return 0


def _print_book(book, depth: int) -> None:
    bids, asks = book.depth("buy", depth), book.depth("sell", depth)
    print(f"{book.product_id}  seq {book.seq}")
    print(f"{'bid orders':>10} {'bid volume':>14} {'bid EUR/MWh':>12} | {'ask EUR/MWh':<12} {'ask volume':<14} "
          f"{'ask orders':<10}")
    for i in range(max(len(bids), len(asks), 1)):
        b = bids[i] if i < len(bids) else None
        a = asks[i] if i < len(asks) else None
        left = f"{b[2]:>10} {fmt_wh(b[1]):>14} {fmt_price(b[0]):>12}" if b else " " * 38
        right = f"{fmt_price(a[0]):<12} {fmt_wh(a[1]):<14} {a[2]:<10}" if a else ""
        print(f"{left} | {right}")


async def a_book(c, args) -> int:
    feed = await c.subscribe_book(args.product)
    async for upd in feed:
        if args.json:
            print(json.dumps(upd.book.as_dict()))
        else:
            _print_book(upd.book, args.depth)
        if not args.follow:
            return 0
        print()
    return 0


async def a_place(c, args) -> int:
    r = await c.place(args.product, args.side, args.price, args.quantity, args.tif,
                      client_order_id=args.client_order_id, sign=args.sign or None)
    if r.duplicate:
        text = f"order {r.order_id} exists already (client order id {args.client_order_id}): nothing new placed"
    else:
        fills = ", ".join(f"{fmt_wh(f.quantity)} @ {fmt_price(f.price)}" for f in r.fills)
        text = (f"order {r.order_id} {r.status}: remaining {fmt_wh(r.remaining or 0)}"
                + (f", filled {fills}" if fills else "") + (f" ({r.reason})" if r.reason else ""))
    _out(args, r.model_dump(), text)
    return 0


async def a_modify(c, args) -> int:
    r = await c.modify(args.order_id, price=args.price, quantity=args.quantity)
    _out(args, r.model_dump(), f"order {r.order_id} {r.status}: remaining {fmt_wh(r.remaining or 0)} at "
         f"{fmt_price(r.price)} EUR/MWh, priority {'kept' if r.priority_kept else 'lost'}")
    return 0


async def a_cancel(c, args) -> int:
    r = await c.cancel(args.order_id)
    _out(args, r.model_dump(), f"order {r.order_id} cancelled ({fmt_wh(r.remaining)} were left)")
    return 0


async def a_cancel_all(c, args) -> int:
    n = await c.cancel_all(args.product)
    _out(args, {"cancelled": n}, f"{n} orders cancelled")
    return 0


async def a_orders(c, args) -> int:
    orders = await c.orders(args.product)
    lines = [f"{o.order_id:>8} {o.product_id:22s} {o.side:4s} {fmt_price(o.price):>10} EUR/MWh "
             f"{fmt_wh(o.remaining):>12} of {fmt_wh(o.quantity)}" + (f"  [{o.client_order_id}]" if o.client_order_id
                                                                     else "") for o in orders]
    _out(args, [o.model_dump() for o in orders], "\n".join(lines) or "no open orders")
    return 0


async def a_trades(c, args) -> int:
    trades = await c.my_trades(args.product, after=args.after, limit=args.limit)
    lines = [f"{t.ts[:19]} #{t.trade_id:<6} {t.product_id:22s} {t.side:4s} {fmt_wh(t.quantity):>12} @ "
             f"{fmt_price(t.price):>9} EUR/MWh  (seq {t.seq})" for t in trades]
    if trades and len(trades) >= args.limit:  # oldest first: say where the next page starts
        lines.append(f"... the first {len(trades)} after seq {args.after}; more: --after {trades[-1].seq}")
    _out(args, [t.model_dump() for t in trades], "\n".join(lines) or "no trades")
    return 0


async def a_positions(c, args) -> int:
    pos = await c.positions()
    lines = [f"{p.product_id:22s} bought {fmt_wh(p.bought):>12} sold {fmt_wh(p.sold):>12} net {fmt_wh(p.net):>12} "
             f"payable {p.payable / 10**8:.2f} EUR  [{p.state}]" for p in pos]
    _out(args, [p.model_dump() for p in pos], "\n".join(lines) or "no positions")
    return 0


async def a_watch(c, args) -> int:
    print(f"watching execution reports of {c.member} (Ctrl-C to stop)", file=sys.stderr)
    async for ex in c.executions():
        if args.json:
            print(ex.model_dump_json(exclude_none=True), flush=True)
        else:
            extra = f" {fmt_wh(ex.quantity)} @ {fmt_price(ex.price)}" if ex.exec == "fill" else ""
            print(f"{ex.ts[:19]} {ex.exec:9s} order {ex.order_id} {ex.product_id}{extra} "
                  f"remaining {ex.remaining}" + (f" ({ex.reason})" if ex.reason else ""), flush=True)
    return 0


ACTIONS = {"login": a_login, "products": a_products, "book": a_book, "place": a_place, "modify": a_modify,
           "cancel": a_cancel, "cancel-all": a_cancel_all, "orders": a_orders, "trades": a_trades,
           "positions": a_positions, "watch": a_watch}


# --------------------------------------------------------------------------- bots


def cmd_bots_run(args) -> int:
    summary = run_bots(members=args.members, speed=args.speed, duration=args.duration, url=args.url,
                       operator_token=args.operator_token, seed=args.seed, strategy=args.strategy,
                       requote_minutes=args.requote_minutes, report_every=args.report_every,
                       out=(lambda s: print(s, file=sys.stderr, flush=True)) if args.json else
                       (lambda s: print(s, flush=True)))
    if args.json:
        print(json.dumps(summary))  # the KPIs under "kpis" (null for --strategy zic)
    else:
        kpis = summary.pop("kpis", None)
        print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        for line in format_kpis(kpis):
            print(line)
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub, bench_sub=None) -> None:
    p = sub.add_parser("client", help="trade from the command line (peer WebSocket API)")
    p.add_argument("--url", default=os.environ.get("VOLTBOURSE_URL", DEFAULT_URL),
                   help=f"exchange WebSocket URL (default {DEFAULT_URL} or $VOLTBOURSE_URL)")
    g = p.add_argument_group("member key (one of)")
    g.add_argument("--key", help="private key, hex (or $VOLTBOURSE_KEY)")
    g.add_argument("--key-file", help="file holding the private key")
    g.add_argument("--seed", help="derive the key of a bot member from this seed (see --member)")
    g.add_argument("--member", type=int, default=0, help="member index with --seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    acts.add_parser("login", help="log in and print the member")
    acts.add_parser("products", help="product states")
    a = acts.add_parser("book", help="order book of a product")
    a.add_argument("product")
    a.add_argument("--depth", type=int, default=10)
    a.add_argument("--follow", action="store_true", help="keep printing the book as it changes")
    a = acts.add_parser("place", help="place an order")
    a.add_argument("product")
    a.add_argument("side", choices=["buy", "sell"])
    a.add_argument("price", type=parse_price, help="EUR/MWh, e.g. 85.50")
    a.add_argument("quantity", type=parse_quantity, help="Wh, or e.g. 2.5kWh")
    a.add_argument("--tif", choices=["gtc", "ioc", "fok"], default="gtc")
    a.add_argument("--client-order-id", help="makes a resubmission safe (idempotent)")
    a.add_argument("--sign", action="store_true", help="sign the order (EIP-712)")
    a = acts.add_parser("modify", help="change an order's price and/or remaining quantity")
    a.add_argument("order_id", type=int)
    a.add_argument("--price", type=parse_price)
    a.add_argument("--quantity", type=parse_quantity)
    a = acts.add_parser("cancel", help="cancel an order")
    a.add_argument("order_id", type=int)
    a = acts.add_parser("cancel-all", help="cancel all my orders (of one product)")
    a.add_argument("--product")
    a = acts.add_parser("orders", help="my open orders")
    a.add_argument("--product")
    a = acts.add_parser("trades", help="my trades, oldest first (--limit at a time; page with --after)")
    a.add_argument("--product")
    a.add_argument("--after", type=int, default=0, help="only trades with seq above this")
    a.add_argument("--limit", type=int, default=100)
    acts.add_parser("positions", help="my positions per product")
    acts.add_parser("watch", help="print my execution reports as they come")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("bots", help="trading bots (many members in one process)")
    bsub = p.add_subparsers(dest="bots_command", required=True, metavar="ACTION")
    b = bsub.add_parser("run", help="run bot members against an exchange (a local one by default)")
    b.add_argument("--url", help="join this exchange (ws://HOST:PORT/ws); default: start a local one")
    b.add_argument("--operator-token", default=os.environ.get("VOLTBOURSE_OPERATOR_TOKEN"),
                   help="register the members through the operator API (with --url; default $VOLTBOURSE_OPERATOR_TOKEN)")
    b.add_argument("--members", type=int, default=200)
    b.add_argument("--speed", type=float, default=600,
                   help="simulated seconds per wall second (the exchange's sim clock speed; 1 for a real clock)")
    b.add_argument("--duration", type=float, default=150, metavar="SECONDS", help="wall-clock run time (0: forever)")
    b.add_argument("--strategy", choices=["community", "zic"], default="community",
                   help="community: prosumer/consumer/battery bots from community profiles; zic: ZI-C traders")
    b.add_argument("--seed", default="1", help="member keys and profiles derive from it (reruns reuse members)")
    b.add_argument("--requote-minutes", type=float, default=15, help="simulated minutes between requotes")
    b.add_argument("--report-every", type=float, default=10, metavar="SECONDS")
    b.add_argument("--json", action="store_true",
                   help="print the summary (with the community KPIs under \"kpis\") as JSON")
    b.set_defaults(func=cmd_bots_run)
