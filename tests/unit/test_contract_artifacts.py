"""The contract artifacts shipped as package data (settlement/artifacts/*.json) are what
contracts/src compiles to, and loading them never runs node.

The drift test compiles from source (py-solc-x over the npm solc shim, as in
test_contracts.py) and compares abi and bytecode with the committed files: a changed
.sol without `make contracts` fails here (and `load_artifacts` refuses it at run time).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from settlement import compiler
from settlement.compiler import (
    ARTIFACTS,
    EVM_VERSION,
    OPTIMIZER_RUNS,
    ArtifactsOutOfDate,
    check_artifacts,
    compiler_version,
    load_artifacts,
    source_hash,
)

pytestmark = pytest.mark.unit

CONTRACTS = ("EuroCredit", "SettlementRegistry")


def test_committed_artifacts_equal_a_compilation_from_source(artifacts):
    shipped = load_artifacts()
    assert set(shipped) == set(artifacts)
    for name in CONTRACTS:
        assert shipped[name].abi == artifacts[name].abi, f"{name}: abi drifted; run `make contracts`"
        assert shipped[name].bytecode == artifacts[name].bytecode, f"{name}: bytecode drifted; run `make contracts`"
        assert shipped[name].bytecode.startswith("0x") and len(shipped[name].bytecode) > 1000


def test_committed_artifacts_record_how_they_were_compiled():
    version = compiler_version()
    digest = source_hash()
    files = sorted(ARTIFACTS.glob("*.json"))
    assert {p.stem for p in files} >= set(CONTRACTS)
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["contractName"] == path.stem
        assert doc["sourceHash"] == digest
        assert doc["compiler"]["version"] == version
        assert doc["evmVersion"] == EVM_VERSION
        assert doc["optimizer"] == {"enabled": True, "runs": OPTIMIZER_RUNS}
        assert path.read_text() == compiler._dump(doc)  # canonical form: `make contracts` rewrites nothing


def test_check_artifacts_finds_no_difference():
    assert check_artifacts() == []


def test_loading_runs_no_node(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("load_artifacts started a process")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(shutil, "which", lambda *a, **kw: None)
    monkeypatch.setenv("PATH", "")
    loaded = load_artifacts()
    assert set(loaded) >= set(CONTRACTS)


def test_changed_source_is_refused_with_a_hint(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(compiler.SOURCES, src)
    assert load_artifacts(sources=src)  # an unchanged copy is accepted
    sol = src / "EuroCredit.sol"
    sol.write_text(sol.read_text() + "\n// edited\n")
    with pytest.raises(ArtifactsOutOfDate, match="make contracts"):
        load_artifacts(sources=src)
    assert load_artifacts(sources=src, check_sources=False)


def test_without_a_checkout_the_artifacts_are_trusted(tmp_path, monkeypatch):
    # a wheel install: no contracts/src beside the package
    monkeypatch.setattr(compiler, "SOURCES", tmp_path / "contracts" / "src")
    assert compiler.checkout_sources() is None
    assert set(load_artifacts()) >= set(CONTRACTS)


def test_missing_or_foreign_artifacts_are_refused(tmp_path):
    with pytest.raises(ArtifactsOutOfDate, match="make contracts"):
        load_artifacts(tmp_path)
    doc = json.loads((ARTIFACTS / "EuroCredit.json").read_text())
    (tmp_path / "EuroCredit.json").write_text(json.dumps(doc | {"evmVersion": "cancun"}))
    with pytest.raises(ArtifactsOutOfDate, match="evmVersion"):
        load_artifacts(tmp_path)


def test_write_is_idempotent_and_check_detects_drift(tmp_path):
    out = tmp_path / "artifacts"
    written = compiler.write_artifacts(out)
    assert {p.name for p in written} == {p.name for p in ARTIFACTS.glob("*.json")}
    for p in ARTIFACTS.glob("*.json"):
        assert (out / p.name).read_text() == p.read_text()
    assert compiler.write_artifacts(out) == []
    doc = json.loads((out / "SettlementRegistry.json").read_text())
    doc["bytecode"] = doc["bytecode"][:-2] + ("11" if doc["bytecode"].endswith("00") else "00")
    (out / "SettlementRegistry.json").write_text(json.dumps(doc))
    problems = check_artifacts(out)
    assert len(problems) == 1 and "bytecode" in problems[0]
