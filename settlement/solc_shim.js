#!/usr/bin/env node
// A `solc` command line for py-solc-x, backed by the npm solc package (solc-js).
// It answers the two calls py-solc-x makes:
//   solc --version          -> "Version: 0.8.x+commit..." (py-solc-x parses this)
//   solc --standard-json    -> reads the standard JSON input on stdin, writes the output
// Nothing is downloaded: solc-js is installed by `make` into contracts/node_modules.
// Build time only (`make contracts` -> settlement/artifacts/*.json, and the tests that
// compile from source): the service loads those artifacts and never runs node.
"use strict";
const path = require("path");
const solc = require(path.join(__dirname, "..", "contracts", "node_modules", "solc"));

const args = process.argv.slice(2);
if (args.includes("--version")) {
  process.stdout.write("solc, the solidity compiler commandline interface (solc-js shim)\n");
  process.stdout.write(`Version: ${solc.version()}\n`);
  process.exit(0);
}
if (!args.includes("--standard-json")) {
  process.stderr.write("solc_shim: only --version and --standard-json are supported\n");
  process.exit(2);
}
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  // Imports are resolved by the caller: settlement/compiler.py passes every source unit
  // inline, ours and the @openzeppelin/contracts files they import (read from
  // contracts/node_modules), so the input is self-contained; refuse any file read.
  const findImports = (p) => ({ error: `import ${p} not supplied in the standard JSON input` });
  process.stdout.write(solc.compile(input, { import: findImports }));
});
