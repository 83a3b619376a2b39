// Hardhat's local JSON-RPC node for the tests and `voltbourse bench settlement --rpc`
// (settlement/devnode.py starts `npx hardhat node` with this file). Only the node is
// used: the contracts are compiled by settlement/compiler.py (solc-js), not by Hardhat.
module.exports = {
  networks: {
    hardhat: {
      chainId: 1337, // the exchange's signing domain (VOLTBOURSE_CHAIN_ID default)
      hardfork: "cancun", // MCOPY and transient storage, as the contracts need
      mining: { auto: true, interval: 0 }, // one block per transaction, at once
      gas: 30_000_000,
      blockGasLimit: 30_000_000,
      initialBaseFeePerGas: 0, // gas is free on the dev node: no base fee to track
      allowUnlimitedContractSize: false,
      loggingEnabled: false,
    },
  },
  // nothing to compile here: keep Hardhat away from contracts/src
  paths: { sources: "./hardhat-none", cache: "./hardhat-cache", artifacts: "./hardhat-artifacts" },
};
