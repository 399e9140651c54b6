# One entry point for everything: `make test` is the test command (README, .ci/run).
# Every target installs what it needs, idempotently, from the package registries only.
PYTHON ?= python3
VENV := .venv
SERVER_VENV := .venv-infinity
MODELS_DIR := .cache/models
PY := $(VENV)/bin/python
SERVER_PY := $(SERVER_VENV)/bin/python
# Test files run in this many worker processes (pytest-xdist, a file per worker at a time; each starts its
# own servers). Most of the suite waits on Dagster's daemons and servers: 2 workers cut it by a third.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=20

export INFINITY_ASSETS_SERVER_PYTHON := $(abspath $(SERVER_PY))
export INFINITY_ASSETS_MODELS_DIR := $(abspath $(MODELS_DIR))

.PHONY: install server-venv models chromium postgres test test-fast demo dev bench docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

server-venv: $(SERVER_VENV)/.installed

$(SERVER_VENV)/.installed: tools/install_infinity_server.sh
	bash tools/install_infinity_server.sh $(SERVER_VENV)
	touch $@

models: $(MODELS_DIR)/.built

$(MODELS_DIR)/.built: $(SERVER_VENV)/.installed tools/build_models.py
	HF_HUB_OFFLINE=1 $(SERVER_PY) tools/build_models.py $(MODELS_DIR)
	touch $@

chromium:
	bash tools/install_debian_package.sh chromium /usr/bin/chromium

postgres:
	bash tools/install_debian_package.sh postgresql '/usr/lib/postgresql/*/bin/pg_ctl'

test: install models chromium postgres
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow and not ui"

demo: install models
	$(PY) tools/demo.py

dev: install models
	$(PY) tools/dev.py

bench: install models postgres
	$(PY) benchmarks/run.py

# The documentation site (mkdocs.yml, docs/) into .cache/site; --strict fails on a broken link, a missing
# anchor or an API reference entry naming a renamed or removed object. DOCS_FLAGS adds mkdocs options.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict $(DOCS_FLAGS)

clean:
	rm -rf $(VENV) $(SERVER_VENV) .cache
