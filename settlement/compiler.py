"""Compile the Solidity sources with py-solc-x driving the npm ``solc`` package.

py-solc-x runs a ``solc`` executable; ours is ``settlement/solc_shim.js``, a node
script over solc-js (installed by ``make`` into ``contracts/node_modules``) that
answers ``--version`` and ``--standard-json``. No compiler is ever downloaded.

Compilation takes a few seconds in solc-js, so the output is cached under the
per-user cache dir keyed by the sha256 of the sources, the settings and the
compiler version: a changed source always recompiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "contracts" / "src"
SHIM = Path(__file__).resolve().parent / "solc_shim.js"
SOLC_JS = ROOT / "contracts" / "node_modules" / "solc"
EVM_VERSION = "prague"  # py-evm has no newer fork
OPTIMIZER_RUNS = 200


class CompilerUnavailable(RuntimeError):
    """node or the npm solc package is missing: run `make` (it runs npm ci in contracts/)."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str  # 0x-prefixed creation code


def _standard_input() -> dict:
    sources = {p.name: {"content": p.read_text()} for p in sorted(SOURCES.glob("*.sol"))}
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }


def _check_toolchain() -> None:
    if shutil.which("node") is None:
        raise CompilerUnavailable("node is not on PATH; install Node.js (the Makefile expects it)")
    if not (SOLC_JS / "soljson.js").exists():
        raise CompilerUnavailable(f"{SOLC_JS} is missing; run `make venv` (npm ci in contracts/)")


def compiler_version() -> str:
    """The solc-js version behind the shim, e.g. ``0.8.37+commit.f401782d.Emscripten.clang``."""
    _check_toolchain()
    return _shim_version()


def _shim_version() -> str:
    import subprocess

    out = subprocess.run([str(SHIM), "--version"], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].removeprefix("Version: ")


def compile_contracts(*, use_cache: bool = True) -> dict[str, Artifact]:
    """Compile every contract in contracts/src; returns artifacts by contract name."""
    import solcx

    _check_toolchain()
    data = _standard_input()
    version = _shim_version()
    key = hashlib.sha256(json.dumps([data, version], sort_keys=True).encode()).hexdigest()[:32]
    cache = platformdirs.user_cache_path("voltbourse") / "solc" / f"{key}.json"
    output = None
    if use_cache and cache.exists():
        try:
            output = json.loads(cache.read_text())
        except (OSError, ValueError):
            output = None
    if output is None:
        output = solcx.compile_standard(data, solc_binary=SHIM, allow_empty=False)
        errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
        if errors:
            raise RuntimeError("solc: " + "\n".join(e.get("formattedMessage", e["message"]) for e in errors))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(output))
        tmp.replace(cache)
    artifacts = {}
    for _file, contracts in output["contracts"].items():
        for name, c in contracts.items():
            artifacts[name] = Artifact(name, c["abi"], "0x" + c["evm"]["bytecode"]["object"])
    return artifacts
