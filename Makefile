# chiron: `make appliance` builds and verifies the default appliance; `make test` runs every check.
# Both create .venv and install what they need; nothing else must be installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOL_WHEELS := build/tool-wheels
KEYS := build/dev-keys
SPEC := bundle/appliance.toml
OUT := dist/chiron.pex
COV_MIN ?= 85

.PHONY: appliance test venv tool-wheels keys lint typecheck lock bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/tool-constraints.txt -e '.[dev]'
	touch $@

# chiron's own wheel and its pinned dependencies (with the serve extra: an appliance can run `chiron serve`):
# what the tool zip inside every appliance is built from.
# Rebuilt only when the code or the pins change, so repeated runs need no package index.
tool-wheels: $(TOOL_WHEELS)/.stamp
$(TOOL_WHEELS)/.stamp: $(VENV)/.installed pyproject.toml requirements/tool-constraints.txt $(shell find src -name '*.py')
	rm -rf $(TOOL_WHEELS)
	$(BIN)/pip wheel -q -c requirements/tool-constraints.txt -w $(TOOL_WHEELS) '.[serve]'
	# The tool runs on the target hosts too: add the compiled dependencies for CPython 3.12 on x86_64
	# (the default bundle's other environment); pure wheels are shared.
	$(BIN)/pip download -q --only-binary=:all: --no-deps --implementation cp --python-version 3.12 --abi cp312 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(TOOL_WHEELS) -r requirements/tool-constraints.txt
	touch $@

# Throw-away development keys (never committed, never packed); production keys come from HSM/KMS URIs.
keys: venv
	test -f $(KEYS)/1.root.json || $(BIN)/chiron keys init $(KEYS)

# Built, verified, rebuilt byte for byte from what it carries (reproducibility is checked on every
# build), and its detached signature checked with ssh-keygen.
appliance: tool-wheels keys
	$(BIN)/chiron build $(SPEC) -o $(OUT) --tool-wheels $(TOOL_WHEELS)
	./$(OUT) verify --root $(KEYS)/1.root.json
	$(BIN)/chiron rebuild $(OUT) --base bundle --check -o build/rebuilt.pex
	if command -v ssh-keygen >/dev/null; then \
	  ssh-keygen -Y verify -f $(KEYS)/allowed_signers -I chiron -n chiron-appliance -s $(OUT).sig < $(OUT); fi

lock: venv keys
	$(BIN)/chiron lock $(SPEC)

lint: venv
	$(BIN)/ruff check src tests benchmarks build_appliance.py
	$(BIN)/ruff format --check src tests benchmarks build_appliance.py
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

test: tool-wheels lint typecheck
	CHIRON_TOOL_WHEELS=$(CURDIR)/$(TOOL_WHEELS) $(BIN)/pytest -m 'not network' \
	  --cov=chiron --cov-branch --cov-report=term --cov-fail-under=$(COV_MIN) $(PYTEST_ARGS)

bench: tool-wheels
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build dist $(VENV) .coverage* .pytest_cache .mypy_cache .ruff_cache
