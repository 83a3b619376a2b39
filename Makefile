# Voltbourse developer tasks. Needs only python3 (with venv + pip) on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SOLCJS := contracts/node_modules/solc/soljson.js

.PHONY: help venv contracts chromium test demo bench serve clean loadtest

help:
	@echo "make demo    two communities trading on a fast clock for DEMO_SECONDS (default 60; 0: until Ctrl-C)"
	@echo "make test    the whole test suite (installs Debian's chromium for the browser tests if missing)"
	@echo "make serve   the exchange service (voltbourse serve; configuration: README.md)"
	@echo "make bench   the engine and journal benchmarks (more: voltbourse bench --help)"
	@echo "make loadtest  Locust over the WebSocket API (USERS, DURATION)"
	@echo "make venv    .venv with the pinned dependencies and the Solidity compiler (every target needs it)"
	@echo "make contracts  compile contracts/src into settlement/artifacts (checked only with CI set)"
	@echo "make clean   remove .venv and build files (not the data directory: README, 'Starting afresh')"

venv: $(STAMP) $(SOLCJS) contracts

# The Solidity compiler: npm's solc (solc-js), pinned in contracts/package-lock.json,
# driven by settlement/solc_shim.js. Used at build time only: the service loads the
# committed artifacts (settlement/artifacts/*.json) and never runs node.
$(SOLCJS): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $(SOLCJS)

# Compile contracts/src into settlement/artifacts/*.json (package data, committed):
# rewritten when the sources, the settings or the solc-js version changed. In CI
# (CI set) only checked: committed artifacts that are not what the sources compile
# to fail the build instead of being silently regenerated.
contracts: $(STAMP) $(SOLCJS)
	$(BIN)/python -m settlement.compiler $(if $(CI),--check,--write)

# Browser tests drive Debian's Chromium (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Reinstall only when the dependency/packaging description changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[server,dev,chain,load,community,browser]'
	touch $(STAMP)

test: venv chromium
	$(BIN)/pytest -q -rfE

# DEMO_SECONDS: how long the demo runs (0: until Ctrl-C); unset: the demo's default (60 s)
demo: venv
	$(BIN)/voltbourse demo $(if $(DEMO_SECONDS),--duration $(DEMO_SECONDS))

bench: venv
	$(BIN)/voltbourse bench engine --json
	$(BIN)/voltbourse bench journal --json

serve: venv
	$(BIN)/voltbourse serve

# Locust over the WebSocket API against a local exchange it starts (docs/loadtest.md).
USERS    ?= 20
DURATION ?= 15s
loadtest: venv
	$(BIN)/python -m loadtest.run --users $(USERS) --duration $(DURATION)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis contracts/node_modules
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
