"""The in-process chain on disk with and without compaction: ``python -m
settlement.compaction_bench [--batches N] [--every K] [--keep-blocks B]``.

Two chains in temporary directories get the same ``anchorBatch`` stream (10 members per
batch, ``Chain.transact``: sign, send, mine, receipt); one is compacted
(settlement.chainstore.compact, closed and reopened around it, as the operator's
``voltbourse settlement compact-chain`` does) every ``--every`` batches. Every ``--every``
batches it prints, for both: the store's size on disk (database and write-ahead log) and
the mean anchor time of the last ``--every`` batches; for the compacted one also the
time the compaction took. One JSON object per line with ``--json``."""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from eth_account import Account

from settlement.chain import Chain
from settlement.chainstore import DEFAULT_KEEP_BLOCKS, compact

MEMBERS = 10
DEPOSIT = 10**15


def _open(directory: Path, deployment: tuple[str, str] | None) -> Chain:
    chain = Chain.in_process(data_dir=directory)
    if deployment is not None:
        chain.attach(*deployment)
    return chain


def run(batches: int, every: int, keep_blocks: int, seed: int = 1, as_json: bool = False) -> list[dict]:
    rng = random.Random(seed)
    members = [Account.create(f"member {i}").address for i in range(MEMBERS)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="voltbourse-compaction-") as tmp:
        dirs = {"plain": Path(tmp) / "plain", "compacted": Path(tmp) / "compacted"}
        chains: dict[str, Chain] = {}
        deployment: tuple[str, str] | None = None
        for name, d in dirs.items():
            chain = chains[name] = _open(d, None)
            dep = chain.deploy()
            deployment = (dep.token, dep.registry)
            for m in members:
                chain.credit_member(m, DEPOSIT)
        times: dict[str, list[float]] = {name: [] for name in dirs}
        try:
            for batch_id in range(1, batches + 1):
                amounts = [rng.randint(-10**6, 10**6) for _ in range(MEMBERS - 1)]
                nets = list(zip(members, [*amounts, -sum(amounts)], strict=True))
                root = rng.randbytes(32)
                for name, chain in chains.items():
                    call, gas = chain.anchor_call(batch_id, root, 10, batch_id * 10, batch_id * 10 + 9, nets)
                    t0 = time.perf_counter()
                    chain.transact(call, gas)
                    times[name].append(time.perf_counter() - t0)
                if batch_id % every:
                    continue
                row: dict = {"batches": batch_id}
                for name in chains:
                    row[f"{name}_anchor_ms"] = round(1000 * sum(times[name]) / len(times[name]), 2)
                    times[name] = []
                chains["compacted"].close()
                done = compact(dirs["compacted"], keep_blocks)
                chains["compacted"] = _open(dirs["compacted"], deployment)
                row["compaction_s"] = round(done.seconds, 3)
                for name, chain in chains.items():
                    assert chain.store is not None
                    row[f"{name}_mb"] = round(chain.store.size_bytes() / 1e6, 2)
                a, b = chains["plain"], chains["compacted"]
                assert a.registry.functions.batchCount().call() == b.registry.functions.batchCount().call()
                assert [a.collateral(m) for m in members] == [b.collateral(m) for m in members]
                rows.append(row)
                print(json.dumps(row) if as_json else
                      f"{batch_id:>6} batches: plain {row['plain_mb']:>7.2f} MB {row['plain_anchor_ms']:>6.2f} ms/anchor"
                      f" | compacted {row['compacted_mb']:>6.2f} MB {row['compacted_anchor_ms']:>6.2f} ms/anchor"
                      f" (compaction {row['compaction_s']:.2f} s)", flush=True)
        finally:
            for chain in chains.values():
                chain.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--every", type=int, default=500, help="compact (and report) every this many batches")
    p.add_argument("--keep-blocks", type=int, default=DEFAULT_KEEP_BLOCKS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    run(args.batches, args.every, args.keep_blocks, args.seed, args.json)


if __name__ == "__main__":
    main()
