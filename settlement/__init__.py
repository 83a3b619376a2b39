"""Settlement: trades batched under Merkle roots, anchored and netted on an EVM chain.

- :mod:`settlement.compiler`   compile contracts/src/*.sol from source (py-solc-x over the npm solc shim)
- :mod:`settlement.merkle`     leaf encoding, tree, proofs (pure)
- :mod:`settlement.netting`    net amounts per member of a batch (pure)
- :mod:`settlement.chain`      web3 access: in-process py-evm by default, JSON-RPC by config; deployment
- :mod:`settlement.worker`     the settlement worker (cursor over committed trades, exactly-once anchoring)
- :mod:`settlement.reconcile`  proves every trade is in exactly one anchored batch
"""
