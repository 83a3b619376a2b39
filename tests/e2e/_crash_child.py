"""Child process for the SIGKILL recovery test (tests/e2e/test_crash_restart.py; run as a
script with the checkout and tests/ on PYTHONPATH, not collected).

Opens the market on the given DSN, registers members, then submits seeded
orders from many concurrent tasks forever, printing one line per
*acknowledged* order as ``ACK <client_order_id> <order_id|-> <seq>``, flushed
immediately. The parent kills it with SIGKILL mid-load.

With a third argument ``snapshots``: a snapshot every 300 commands, whose encoding (in
the forked snapshot process) is slowed to 30 s after the second one; the child prints
``SNAPSHOTS <n>`` as each is stored and ``SNAPPING <cmd_seq> <pid>`` when one starts, so
the parent can kill the market while that snapshot is being taken.
"""

import asyncio
import sys
import time

from support.market import open_test_market

from exchange.core.model import Duplicate, OrderAccepted, Rejected
from exchange.runtime import snapshots
from exchange.tools import workload


def _slowed(encode):
    def slow(engine, cmd_seq):
        time.sleep(30)
        return encode(engine, cmd_seq)
    return slow


async def _watch(market) -> None:
    s, fast, said = market.snapshotter, snapshots.encode, 0
    stale = None  # a snapshot forked before encoding was slowed (it encodes fast): not the one
    while True:
        if s.written != said:
            said = s.written
            print(f"SNAPSHOTS {said}", flush=True)
        if said >= 2 and snapshots.encode is fast:
            snapshots.encode = _slowed(fast)  # the next snapshot process forked hangs
            stale = s.pid
        if snapshots.encode is not fast and s.busy and s.pid != stale:
            print(f"SNAPPING {market.runtime.cmd_seq} {s.pid}", flush=True)
            return
        await asyncio.sleep(0.001)


async def main(dsn: str, market_id: str, mode: str = "") -> None:
    every = 300 if mode == "snapshots" else 100_000
    market = await open_test_market(dsn, market_id, journal_max_batch=200, snapshot_every_commands=every)
    if mode == "snapshots":
        asyncio.get_running_loop().create_task(_watch(market))
    rt = market.runtime
    names = workload.members(20)
    await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
    products = sorted(p for p, pb in rt.engine.products.items() if pb.state.value == "open")
    flow = workload.OrderFlow(products, names, seed=7)
    counter = iter(range(10**9))
    print("READY", flush=True)

    async def client() -> None:
        for i in counter:
            cmd = flow.place(0, crossing=i % 3 == 0)
            cmd.client_order_id = f"c{i}"
            res = await rt.submit(cmd)
            first = res.events[0]
            if isinstance(first, OrderAccepted):
                oid = first.order_id
            elif isinstance(first, Duplicate):
                oid = first.order_id
            else:
                assert isinstance(first, Rejected)
                oid = "-"
            sys.stdout.write(f"ACK {cmd.client_order_id} {oid} {first.seq}\n")
            sys.stdout.flush()

    await asyncio.gather(*(client() for _ in range(32)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
