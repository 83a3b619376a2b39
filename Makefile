# Voltbourse developer tasks. Needs only python3 (with venv + pip) on the machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench serve clean

venv: $(STAMP)

# Reinstall only when the dependency/packaging description changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,chain,load,community,browser]'
	touch $(STAMP)

test: venv
	$(BIN)/pytest -q -rfE

demo: venv
	$(BIN)/voltbourse demo

bench: venv
	$(BIN)/voltbourse bench engine --json
	$(BIN)/voltbourse bench journal --json

serve: venv
	$(BIN)/voltbourse serve

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
