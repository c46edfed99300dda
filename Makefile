# marketlake: `make demo` and `make test` each bootstrap .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
ARGS   ?=

.PHONY: venv dev demo test test-fast lint bench clean java-check

# Base install (what the jobs need). Idempotent: re-runs only when pyproject.toml changes.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

# Base plus the dev extra (tests, benchmarks, lint).
dev: $(STAMP)

$(STAMP): pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

java-check: venv
	@$(PY) -m marketlake.java

demo: venv java-check
	$(PY) jobs/pipeline.py --config conf/local.yaml $(ARGS)

test: dev java-check
	$(PY) -m pytest $(ARGS)

test-fast: dev java-check
	$(PY) -m pytest -m 'not slow' $(ARGS)

lint: dev
	$(VENV)/bin/ruff check .

bench: dev java-check
	$(PY) bench/$(or $(BENCH),lake).py $(ARGS)

clean:
	rm -rf lakehouse spark-warehouse metastore_db derby.log .pytest_cache
