# Sluice: `make run` starts the store (embedded SQLite) and the gateway, `make test` runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := clients/node/node_modules/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
GEN_DIR := clients/python
PROTOS := $(shell find protos -name '*.proto')
SLUICE_DATA ?= ./data
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install system-packages images protos check-protos lint checkov fmt console test test-beside test-secure faults run demo bench clean

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt clients/python/pyproject.toml services/store/pyproject.toml services/gateway/pyproject.toml sidecar/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements-dev.txt -e clients/python -e services/store -e services/gateway -e sidecar
	touch $@

# Regenerate the committed stubs from protos/ (proto path = import path: sluice/v1/...).
protos: $(STAMP)
	$(PY) scripts/genprotos.py $(GEN_DIR)

# Fails when the committed stubs differ from what the .proto files generate.
check-protos: $(STAMP)
	@tmp=$$(mktemp -d) && $(PY) scripts/genprotos.py $$tmp && \
	  diff -r -x __pycache__ -x __init__.py -x py.typed $$tmp/sluice/v1 $(GEN_DIR)/sluice/v1 \
	  && echo "generated code is up to date" \
	  || { echo "generated code is stale: run 'make protos' and commit" >&2; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

lint: $(STAMP) checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint services/store/Dockerfile services/gateway/Dockerfile sidecar/Dockerfile \
	  examples/orders-app/Dockerfile

# checkov lives in its own virtualenv: its many dependencies stay out of the project's.
$(CHECKOV_STAMP): tools/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q -r tools/checkov-requirements.txt
	touch $@

# Security checks over every rendered overlay and the Dockerfiles (skips, with reasons,
# in .checkov.yaml).
checkov: $(STAMP) $(CHECKOV_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  for o in deploy/k8s/overlays/*/; do \
	    $(VENV)/bin/kubectl kustomize $$o > $$tmp/$$(basename $$o).yaml || exit 1; done && \
	  export BC_SKIP_MAPPING=TRUE && \
	  $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --framework kubernetes -d $$tmp && \
	  $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --framework dockerfile \
	    -f services/store/Dockerfile -f services/gateway/Dockerfile -f sidecar/Dockerfile \
	    -f examples/orders-app/Dockerfile

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The Node.js client's packages (its test runs inside the pytest suite, against a real store).
$(NODE_STAMP): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The four images, built for real with podman from the repository root (see the script).
images:
	bash scripts/images.sh

# Debian packages the tests need (Go and protoc for clients/go): installed as root, else named.
system-packages:
	@bash scripts/system-packages.sh

# The console's libraries (uPlot), from npm as the lock file pins them; `make console` copies
# them into the gateway package, where they are committed (the console fetches nothing at
# run time). tests/console checks the committed copies are the locked ones.
CONSOLE_NPM = services/gateway/console
CONSOLE_STAMP = $(CONSOLE_NPM)/node_modules/.installed
CONSOLE_VENDOR = services/gateway/sluice_gateway/static/console/vendor
$(CONSOLE_STAMP): $(CONSOLE_NPM)/package.json $(CONSOLE_NPM)/package-lock.json
	cd $(CONSOLE_NPM) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

console: $(CONSOLE_STAMP)
	cp $(CONSOLE_NPM)/node_modules/uplot/dist/uPlot.iife.min.js $(CONSOLE_NPM)/node_modules/uplot/dist/uPlot.min.css $(CONSOLE_VENDOR)/
	cp $(CONSOLE_NPM)/node_modules/uplot/LICENSE $(CONSOLE_VENDOR)/uPlot.LICENSE

# Two lanes: the main pass, and beside it the long tests of their own (marked `beside`)
# then the secure pass, with their own temporary directory and PostgreSQL databases
# (every port is 0). The linters run beside both (in a fresh clone they take 1.5 min,
# most of it installing checkov). Their output is kept in build/ and shown when all ended.
BESIDE_LOG = build/test-beside.log
LINT_LOG = build/lint.log
test: $(STAMP) $(NODE_STAMP) $(CONSOLE_STAMP) system-packages check-protos
	@mkdir -p build
	@echo "beside the main pass: the linters ($(LINT_LOG)), the tests marked beside then the secure pass ($(BESIDE_LOG))"
	@$(MAKE) --no-print-directory lint >$(LINT_LOG) 2>&1 & lint=$$!; \
	$(MAKE) --no-print-directory test-beside SECURE_PYTEST_ARGS="-p no:cacheprovider --basetemp=$$(mktemp -d)" \
	    >$(BESIDE_LOG) 2>&1 & beside=$$!; \
	$(VENV)/bin/pytest -m "not beside" $(PYTEST_ARGS); main=$$?; \
	wait $$beside; rc=$$?; \
	wait $$lint; lint_rc=$$?; \
	echo "================================ second lane ================================="; \
	cat $(BESIDE_LOG); \
	echo "==================================== lint ===================================="; \
	cat $(LINT_LOG); \
	test $$main -eq 0 && test $$rc -eq 0 && test $$lint_rc -eq 0

test-beside: $(STAMP)
	@$(VENV)/bin/pytest -m beside $(PYTEST_ARGS) $(SECURE_PYTEST_ARGS); a=$$?; \
	echo "================================ secure pass ================================="; \
	$(MAKE) --no-print-directory test-secure; b=$$?; \
	test $$a -eq 0 && test $$b -eq 0

# The mesh suites again with TLS, tokens and the policy on every store, gateway and sidecar
# (tests/secure_mode.py).
SECURE_SUITES = tests/gateway tests/sidecar tests/security/test_secure_mode.py
test-secure: $(STAMP)
	SLUICE_TEST_SECURE=1 $(VENV)/bin/pytest $(SECURE_SUITES) $(PYTEST_ARGS) $(SECURE_PYTEST_ARGS)

# The fault suite alone, longer: 20 kill cycles of each kind (make test runs 3).
faults: $(STAMP)
	SLUICE_FAULT_CYCLES=$${SLUICE_FAULT_CYCLES:-20} $(VENV)/bin/pytest tests/faults --timeout 900 $(PYTEST_ARGS)

# The mesh on one machine: the store (embedded SQLite) and the gateway; Ctrl-C stops both.
run: $(STAMP)
	$(PY) scripts/mesh.py --data $(SLUICE_DATA)

# The mesh plus an existing service (examples/orders-app) with its sidecar, a producer
# and a gateway subscriber, with a line a second on where the events are; Ctrl-C stops.
demo: $(STAMP)
	$(PY) scripts/demo.py --data $(SLUICE_DATA)/demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .mypy_cache .pytest_cache .ruff_cache clients/node/node_modules
