"""The Solidity contracts: compiled at build time into package data, loaded at run time.

Build time (``make contracts``, i.e. ``python -m settlement.compiler --write``):
py-solc-x runs a ``solc`` executable, ours is ``settlement/solc_shim.js``, a node
script over solc-js (installed by ``make`` into ``contracts/node_modules``) that
answers ``--version`` and ``--standard-json``. No compiler is ever downloaded. The
output (abi, creation bytecode, solc version, evmVersion, optimizer settings, the
sha256 of the sources and the version and sha256 of the library files they import) is
written as one JSON file per contract into ``settlement/artifacts/``, which is committed
and shipped as package data.

Imports: the sources import OpenZeppelin (``@openzeppelin/contracts/...``, the npm
package pinned in ``contracts/package-lock.json``, installed by ``make`` with ``npm ci``).
They are resolved here, not by solc: :func:`source_units` follows every ``import`` from
``contracts/src`` (relative paths against the importing unit, package paths under
``contracts/node_modules``, only the packages in :data:`LIBRARIES`) and the standard-JSON
input carries every unit inline under its import path, so solc never reads the disk (the
shim refuses reads), the input is self-contained and the cache key covers the library
sources too.

Run time (:func:`load_artifacts`, used by :mod:`settlement.chain`): reads those JSON
files and never runs node. In a checkout (``contracts/src`` next to the package) the
recorded source hash must match the sources, otherwise :class:`ArtifactsOutOfDate`
tells to run ``make contracts``; a wheel install has no ``contracts/src`` and trusts
its artifacts.

:func:`compile_contracts` still compiles from source (tests run the real EVM on it and
compare it with the committed artifacts). Its solc output is cached under the per-user
cache dir keyed by the sha256 of the sources, the settings and the compiler version.
Only the standard library is imported at module level: loading artifacts needs neither
py-solc-x nor platformdirs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "contracts" / "src"
SHIM = Path(__file__).resolve().parent / "solc_shim.js"
NODE_MODULES = ROOT / "contracts" / "node_modules"
SOLC_JS = NODE_MODULES / "solc"
#: npm packages the sources may import (each pinned in contracts/package-lock.json)
LIBRARIES = ("@openzeppelin/contracts",)
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EVM_VERSION = "prague"  # py-evm has no newer fork
OPTIMIZER_RUNS = 200
ARTIFACT_FORMAT = 2  # 2: records the imported libraries (``libraries``)


class CompilerUnavailable(RuntimeError):
    """node or the npm solc package is missing: run `make` (it runs npm ci in contracts/)."""


class ArtifactsOutOfDate(RuntimeError):
    """The committed artifacts were not compiled from the contracts/src of this checkout."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str  # 0x-prefixed creation code


# ---------------------------------------------------------------------- sources
def _settings(own: list[str]) -> dict:
    return {
        "evmVersion": EVM_VERSION,
        "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
        # artifacts of our own contracts only (not of every library contract imported)
        "outputSelection": {name: {"*": ["abi", "evm.bytecode.object"]} for name in own},
    }


def _source_files(sources: Path | None = None) -> list[Path]:
    return sorted((sources or SOURCES).glob("*.sol"))


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
#: import "p"; import "p" as X; import * as X from "p"; import {A, B as C} from "p";
_IMPORT = re.compile(r"\bimport\s+(?:[^;\"']*?\bfrom\s+)?[\"']([^\"']+)[\"']")


def _imports(text: str) -> list[str]:
    """The paths ``text`` imports (comments removed first)."""
    return _IMPORT.findall(_COMMENT.sub(" ", text))


def _library_of(unit: str) -> str | None:
    return next((lib for lib in LIBRARIES if unit.startswith(lib + "/")), None)


def _unit_name(importer: str, path: str) -> str:
    """solc's source unit name of ``import path`` in unit ``importer`` (no remappings):
    a relative path is joined to the importer's directory, any other is taken as it is."""
    if path.startswith(("./", "../")):
        path = posixpath.join(posixpath.dirname(importer), path)
    unit = posixpath.normpath(path)
    if unit.startswith(("../", "/")) or unit == "..":
        raise CompilerUnavailable(f"{importer}: import {path!r} leaves the source tree")
    return unit


def _unit_file(unit: str, sources: Path) -> Path:
    lib = _library_of(unit)
    if lib is None:
        if "/" in unit:
            raise CompilerUnavailable(f"import of {unit!r}: only contracts/src/*.sol and the packages "
                                      f"{', '.join(LIBRARIES)} (contracts/node_modules) can be imported")
        return sources / unit
    path = NODE_MODULES / unit
    if not (NODE_MODULES / lib / "package.json").is_file():
        raise CompilerUnavailable(f"{NODE_MODULES / lib} is missing; run `make venv` (npm ci in contracts/)")
    if not path.is_file():
        raise CompilerUnavailable(f"import of {unit!r}: no such file in {NODE_MODULES / lib}")
    return path


def source_units(sources: Path | None = None) -> dict[str, Path]:
    """Every source unit of the compilation by its name: the ``*.sol`` of ``sources`` (their
    file names) and, transitively, what they import (library units by their import path,
    read from contracts/node_modules)."""
    sources = sources or SOURCES
    units = {p.name: p for p in _source_files(sources)}
    todo = list(units)
    while todo:
        importer = todo.pop()
        for path in _imports(units[importer].read_text()):
            unit = _unit_name(importer, path)
            if unit not in units:
                units[unit] = _unit_file(unit, sources)
                todo.append(unit)
    return dict(sorted(units.items()))


def library_record(sources: Path | None = None) -> dict[str, dict[str, str]]:
    """Per imported npm package: its installed version and the sha256 of the files of it
    the sources import (names and bytes, sorted by name)."""
    record = {}
    units = source_units(sources)
    for lib in LIBRARIES:
        files = [(u, p) for u, p in units.items() if _library_of(u) == lib]
        if not files:
            continue
        h = hashlib.sha256()
        for unit, path in files:
            data = path.read_bytes()
            h.update(f"{unit}\0{len(data)}\0".encode())
            h.update(data)
        version = json.loads((NODE_MODULES / lib / "package.json").read_text())["version"]
        record[lib] = {"version": version, "sha256": h.hexdigest()}
    return record


def _standard_input(sources: Path | None = None) -> dict:
    own = [p.name for p in _source_files(sources)]
    files = {unit: {"content": p.read_text()} for unit, p in source_units(sources).items()}
    return {"language": "Solidity", "sources": files, "settings": _settings(own)}


def source_hash(sources: Path | None = None) -> str:
    """sha256 over the ``*.sol`` files of ``sources`` (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    for p in _source_files(sources):
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def checkout_sources() -> Path | None:
    """``contracts/src`` when running from a checkout (or an editable install), else None."""
    if (ROOT / "pyproject.toml").is_file() and SOURCES.is_dir() and _source_files(SOURCES):
        return SOURCES
    return None


# ---------------------------------------------------------------------- compiling (node)
def _check_toolchain() -> None:
    if shutil.which("node") is None:
        raise CompilerUnavailable("node is not on PATH; install Node.js (the Makefile expects it)")
    for needed in (SOLC_JS / "soljson.js", *(NODE_MODULES / lib / "package.json" for lib in LIBRARIES)):
        if not needed.exists():
            raise CompilerUnavailable(f"{needed.parent} is missing; run `make venv` (npm ci in contracts/)")


def compiler_version() -> str:
    """The solc-js version behind the shim, e.g. ``0.8.37+commit.f401782d.Emscripten.clang``."""
    _check_toolchain()
    return _shim_version()


def _shim_version() -> str:

    out = subprocess.run([str(SHIM), "--version"], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].removeprefix("Version: ")


def _compile_output(*, use_cache: bool) -> tuple[dict, str]:
    """The solc standard-JSON output for contracts/src and the compiler version."""
    import solcx  # noqa: PLC0415 - optional: py-solc-x is in the chain extra (compiling from source)

    _check_toolchain()
    if checkout_sources() is None:
        raise CompilerUnavailable(f"no Solidity sources in {SOURCES}: compiling needs a checkout")
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
    return output, version


def compile_contracts(*, use_cache: bool = True) -> dict[str, Artifact]:
    """Compile every contract in contracts/src from source (needs node and the npm solc
    package: a checkout after ``make``); returns artifacts by contract name."""
    output, _version = _compile_output(use_cache=use_cache)
    own = {p.name for p in _source_files()}
    artifacts = {}
    for source_name, contracts in output["contracts"].items():
        if source_name not in own:
            continue
        for name, c in contracts.items():
            artifacts[name] = Artifact(name, c["abi"], "0x" + c["evm"]["bytecode"]["object"])
    return artifacts


def _artifact_documents(*, use_cache: bool) -> dict[str, dict]:
    """The JSON document of each contract, by file name (``<Contract>.json``)."""
    output, version = _compile_output(use_cache=use_cache)
    digest = source_hash()
    libraries = library_record()
    own = {p.name for p in _source_files()}
    docs = {}
    for source_name, contracts in sorted(output["contracts"].items()):
        if source_name not in own:
            continue
        for name, c in sorted(contracts.items()):
            docs[f"{name}.json"] = {
                "format": ARTIFACT_FORMAT,
                "contractName": name,
                "sourceName": source_name,
                "sourceHash": digest,
                "libraries": libraries,
                "compiler": {"name": "solc-js", "version": version},
                "evmVersion": EVM_VERSION,
                "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
                "abi": c["abi"],
                "bytecode": "0x" + c["evm"]["bytecode"]["object"],
            }
    return docs


def _dump(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_artifacts(directory: Path | None = None, *, use_cache: bool = True) -> list[Path]:
    """Compile from source and write ``<Contract>.json`` into ``directory`` (default:
    the package's ``settlement/artifacts``); stale ``*.json`` there are removed.
    Returns the files whose content changed."""
    directory = directory or ARTIFACTS
    docs = _artifact_documents(use_cache=use_cache)
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for old in directory.glob("*.json"):
        if old.name not in docs:
            old.unlink()
            changed.append(old)
    for fname, doc in docs.items():
        path = directory / fname
        text = _dump(doc)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            changed.append(path)
    return changed


def check_artifacts(directory: Path | None = None, *, use_cache: bool = True) -> list[str]:
    """Compile from source and compare with the artifacts in ``directory``: the list of
    differences (empty: the committed artifacts are what the sources compile to)."""
    directory = directory or ARTIFACTS
    docs = _artifact_documents(use_cache=use_cache)
    problems = []
    present = {p.name for p in directory.glob("*.json")}
    for extra in sorted(present - set(docs)):
        problems.append(f"{directory / extra}: no such contract in {SOURCES}")
    for fname, doc in docs.items():
        path = directory / fname
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        stored = json.loads(path.read_text())
        for field in sorted(set(doc) | set(stored)):
            if stored.get(field) != doc.get(field):
                problems.append(f"{path}: {field} differs from a compilation of {SOURCES}")
    return problems


# ---------------------------------------------------------------------- loading (no node)
def load_artifacts(directory: Path | None = None, *, sources: Path | None = None,
                   check_sources: bool = True) -> dict[str, Artifact]:
    """The compiled contracts shipped as package data, by contract name. Never runs node.

    ``sources`` (default: ``contracts/src`` when running from a checkout, None for a
    wheel install) is checked against the recorded source hash, unless
    ``check_sources`` is false; a mismatch raises :class:`ArtifactsOutOfDate`.
    """
    directory = directory or ARTIFACTS
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ArtifactsOutOfDate(f"no contract artifacts in {directory}; run `make contracts`")
    docs = [json.loads(p.read_text()) for p in files]
    if check_sources:
        src = sources if sources is not None else checkout_sources()
        if src is not None:
            want = source_hash(src)
            stale = [p.name for p, d in zip(files, docs, strict=True) if d.get("sourceHash") != want]
            if stale:
                raise ArtifactsOutOfDate(
                    f"the contract artifacts in {directory} ({', '.join(stale)}) were not compiled from "
                    f"the Solidity sources in {src}: run `make contracts` (python -m settlement.compiler "
                    "--write) and commit settlement/artifacts/")
    for p, d in zip(files, docs, strict=True):
        if d.get("format") != ARTIFACT_FORMAT or d.get("evmVersion") != EVM_VERSION:
            raise ArtifactsOutOfDate(f"{p}: format {d.get('format')} / evmVersion {d.get('evmVersion')}, "
                                     f"expected {ARTIFACT_FORMAT} / {EVM_VERSION}: run `make contracts`")
    return {d["contractName"]: Artifact(d["contractName"], d["abi"], d["bytecode"]) for d in docs}


def artifacts_up_to_date(directory: Path | None = None) -> bool:
    """True when ``directory`` holds artifacts of the current sources, settings, installed
    solc-js version and imported library files (read from contracts/node_modules: no node run)."""
    try:
        load_artifacts(directory)
    except ArtifactsOutOfDate:
        return False
    try:
        solc_version = json.loads((SOLC_JS / "package.json").read_text())["version"]
        libraries = library_record()
    except (OSError, ValueError, KeyError, CompilerUnavailable):
        return False
    for p in (directory or ARTIFACTS).glob("*.json"):
        d = json.loads(p.read_text())
        if not d["compiler"]["version"].startswith(solc_version + "+") or d.get("optimizer") != {
                "enabled": True, "runs": OPTIMIZER_RUNS} or d.get("libraries") != libraries:
            return False
    return True


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m settlement.compiler",
        description="Compile contracts/src into the package data settlement/artifacts/*.json.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true",
                      help="compile and write the artifacts (skipped when they are up to date)")
    mode.add_argument("--check", action="store_true",
                      help="compile and fail (exit 1) when the artifacts differ from the sources")
    parser.add_argument("--force", action="store_true", help="with --write: recompile even when up to date")
    parser.add_argument("--no-cache", action="store_true", help="do not use the per-user solc output cache")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check_artifacts(use_cache=not args.no_cache)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `make contracts` and commit settlement/artifacts/", file=sys.stderr)
                return 1
            print(f"contract artifacts in {ARTIFACTS} match {SOURCES}")
            return 0
        if not args.force and artifacts_up_to_date():
            print(f"contract artifacts in {ARTIFACTS} are up to date")
            return 0
        changed = write_artifacts(use_cache=not args.no_cache)
        for path in changed:
            print(f"wrote {path}")
        if not changed:
            print(f"contract artifacts in {ARTIFACTS} unchanged")
        return 0
    except CompilerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
