"""Child process for the SIGKILL recovery test (run as a script, not collected).

Opens the market on the given DSN, registers members, then submits seeded
orders from many concurrent tasks forever, printing one line per
*acknowledged* order as ``ACK <client_order_id> <order_id|-> <seq>``, flushed
immediately. The parent kills it with SIGKILL mid-load.
"""

import asyncio
import sys

from exchange.core.model import Duplicate, OrderAccepted, Rejected
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.service import open_market
from exchange.tools import workload
from exchange.tools.bench import BENCH_T0


async def main(dsn: str, market_id: str) -> None:
    settings = load_settings(database_url=dsn, market_id=market_id, journal_max_batch=200)
    market = await open_market(dsn, settings, ManualClock(BENCH_T0))
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
