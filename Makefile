# marketlake: `make demo` and `make test` each bootstrap .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
ARGS   ?=

.PHONY: venv dev demo test test-fast test-heavy lint bench clean java-check dag-check test-cluster docs serve

# Base install (what the jobs need). Idempotent: re-runs only when pyproject.toml changes.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

# Base plus the dev extra (tests, benchmarks, lint).
dev: $(STAMP)

# gbstats (GrowthBook's stats engine) is the tests' reference for the sequential tests; it is pure Python but
# pins pandas<2 and numpy<2, which pyspark 4 cannot use, so it goes in without its dependencies.
$(STAMP): pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'gbstats==0.8.0'
	@touch $@

java-check: venv
	@$(PY) -m marketlake.java

# The demo writes a synthetic shop into the landing folder first (--generate); a production pipeline never does.
demo: venv java-check
	$(PY) jobs/pipeline.py --generate --config conf/local.yaml $(ARGS)

test: dev java-check
	$(PY) -m pytest $(ARGS)

test-fast: dev java-check
	$(PY) -m pytest -m 'not slow and not cluster' $(ARGS)

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The Airflow DAG under Airflow itself, in its own virtualenv (Airflow's pins conflict with the project's):
# loads it with DagBag, then runs it end to end with `airflow dags test` on a tiny shop (ARGS="-m 'not slow'"
# skips that run).
AIRFLOW_VENV := .venv-airflow
AIRFLOW_VERSION ?= 3.3.2

$(AIRFLOW_VENV)/.installed:
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check 'apache-airflow==$(AIRFLOW_VERSION)' pytest
	@touch $@

dag-check: dev java-check $(AIRFLOW_VENV)/.installed
	AIRFLOW_HOME=$(CURDIR)/$(AIRFLOW_VENV)/home PYTHONPATH=$(CURDIR)/lib \
	  $(AIRFLOW_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_dag.py $(ARGS)

# The heavy cases (marker `heavy`: stream SIGKILL rounds, segment robustness shops): tens of minutes, not in
# `make test` nor CI (whose 90 minutes they would overrun); run them before touching the stream or segment.
test-heavy: dev java-check
	$(PY) -m pytest -m heavy $(ARGS)

# A Spark standalone master and two workers on 127.0.0.1, the pipeline submitted to them, once
# undisturbed and once with a worker killed mid-job (tests/test_cluster.py).
test-cluster: dev java-check
	$(PY) -m pytest -m cluster tests/test_cluster.py $(ARGS)

# docs/tables.md from the table catalog (tests/test_catalog.py fails when it is stale).
docs: venv
	$(PY) -m marketlake.catalog > docs/tables.md

# The HTTP service over the lake's gold tables (docs/jobs/serve.md); runs until stopped. No Spark, no Java.
serve: dev
	$(PY) -m marketlake.serve --config conf/local.yaml $(ARGS)

bench: dev java-check
	$(PY) bench/$(or $(BENCH),lake).py $(ARGS)

clean:
	rm -rf lakehouse spark-warehouse metastore_db derby.log .pytest_cache
