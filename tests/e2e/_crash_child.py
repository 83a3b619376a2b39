"""Child process for the SIGKILL recovery test (tests/e2e/test_crash_restart.py; run as a
script with the checkout and tests/ on PYTHONPATH, not collected).

Opens the market on the given DSN, registers members, then submits seeded
orders from many concurrent tasks forever, printing one line per
*acknowledged* order as ``ACK <client_order_id> <order_id|-> <seq>``, flushed
immediately. The parent kills it with SIGKILL mid-load.
"""

import asyncio
import sys

from support.market import open_test_market

from exchange.core.model import Duplicate, OrderAccepted, Rejected
from exchange.tools import workload


async def main(dsn: str, market_id: str) -> None:
    market = await open_test_market(dsn, market_id, journal_max_batch=200)
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
    asyncio.run(main(sys.argv[1], sys.argv[2]))
