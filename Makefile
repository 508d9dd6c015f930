# chiron: `make appliance` builds and verifies the default appliance; `make test` runs every check.
# Both create .venv and install what they need; `make test` also brings up the system packages and the Docker
# Engine the tests use (tests/provision.py). Nothing else must be installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOL_WHEELS := build/tool-wheels
KEYS := build/dev-keys
SPEC := bundle/appliance.toml
OUT := dist/chiron.pex
COV_MIN ?= 85

# Coverage is gated on the full run only: a subset chosen with PYTEST_ARGS (`make test PYTEST_ARGS='-k foo'`)
# always covers less, so it is measured and shown but not gated.
COV_GATE = $(if $(strip $(PYTEST_ARGS)),,--cov-fail-under=$(COV_MIN))

.PHONY: appliance test test-unit provision venv tool-wheels keys lint typecheck lock bench clean

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
$(TOOL_WHEELS)/.stamp: $(VENV)/.installed pyproject.toml requirements/tool-constraints.txt $(shell find src -name '*.py' -o -name '*.html' -o -name '*.css')
	# setuptools builds in ./build/lib: clear it, or a module moved into a package stays in the wheel.
	rm -rf $(TOOL_WHEELS) build/lib build/bdist.*
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

# The system packages and the Docker Engine the tests use: installed and started when run as root with
# apt-get, else a message naming what is missing (the list is in tests/provision.py). Cheap when all is there.
provision:
	$(PYTHON) tests/provision.py

# Provisioned, every component must be used: a skipped test fails (CHIRON_REQUIRE_COMPONENTS, tests/conftest.py).
# -v prints each test as it starts and ends; the 20 slowest are listed at the end.
TEST_ENV = CHIRON_REQUIRE_COMPONENTS=1 CHIRON_TOOL_WHEELS=$(CURDIR)/$(TOOL_WHEELS) PYTHONUNBUFFERED=1

# Two tiers: the unit tier (in-memory appliances, seconds) fails fast before the integration tier
# (real pex builds, engines, registries). Coverage is measured over both and gated on the full run.
test: provision tool-wheels lint typecheck
	$(TEST_ENV) $(BIN)/pytest -q -p no:cacheprovider tests/unit --cov=chiron --cov-branch --cov-report=
	$(TEST_ENV) $(BIN)/pytest -v -rfEs --durations=20 -m 'not network' tests/integration \
	  --cov=chiron --cov-branch --cov-append --cov-report=term $(COV_GATE) $(PYTEST_ARGS)

test-unit: venv
	$(TEST_ENV) $(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

bench: tool-wheels
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build dist $(VENV) .coverage* .pytest_cache .mypy_cache .ruff_cache
