# Ad-event analytics workbench. `make` (or `make help`) lists the targets.
#
# Everything runs in .venv, created and kept in step with pyproject.toml by `make setup`.
# Data sets are generated under data/ (git-ignored) and reused; reports land in reports/.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ANALYTICS := $(PY) -m analytics
SETUP_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(SETUP_HASH)

# Data sets: data/raw-ROWS (CSV parts) and data/lake-ROWS (prepared lake), reused when present.
ROWS ?= 15000000
SCALE ?=
ifeq ($(SCALE),full)
override ROWS := 245000000
endif
SEED ?= 0
DIRTY ?= 0
DATA_TAG := $(ROWS)$(if $(filter-out 0 0.0,$(DIRTY)),-dirty$(DIRTY))
RAW_DIR := data/raw-$(DATA_TAG)
LAKE_DIR := data/lake-$(DATA_TAG)
GENERATED := $(RAW_DIR)/.generated-seed$(SEED)
MEMORY_LIMIT ?= 4GiB

REPORTS ?= reports
SUFFIX ?=
SWEEP_ROWS ?= 1000000 5000000 15000000
REPORT_TIMEOUT ?=

# Tests: pytest over tests/ (modules kept whole per worker: module-scoped fixtures build data once);
# tests/test_notebooks.py runs each notebook with its defaults through `make reports`. `make test-nbval`
# runs them in place on the small data set their defaults name (data/nbval, what `make lab` opens).
PYTEST_ARGS ?=
XDIST ?= -n 2 --dist loadfile
NBVAL_DIR := data/nbval
NBVAL_STAMP := $(NBVAL_DIR)/.ready
NBVAL_ROWS := 5000

.PHONY: help setup kernel lab lint test test-fast test-py test-nbval nbval-data data lake views benchmark sweep reports strip clean view-space

help: ## list the targets (the default goal)
	@echo "usage: make TARGET [VAR=value ...]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: ROWS=$(ROWS) SCALE=full (ROWS=245000000) DIRTY=$(DIRTY) SEED=$(SEED) LAKE=path RAW=path"
	@echo "           SWEEP_ROWS='$(SWEEP_ROWS)' MEMORY_LIMIT=$(MEMORY_LIMIT) PYTEST_ARGS='...' LAB_ROWS=$(LAB_ROWS) LAB_ARGS='...'"
	@echo "           ADAPTIVE_BUDGET=$(ADAPTIVE_BUDGET) (the adaptive views benchmark of make benchmark)"

setup: $(STAMP) kernel ## create .venv, install the package with pinned [dev] extras, register the `analytics` Jupyter kernel

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The kernel lives in .venv/share/jupyter (`ipykernel install --prefix .venv`), never in the user's
# home: it goes with the checkout. Another JupyterLab finds it with JUPYTER_PATH=$(abspath $(VENV))/share/jupyter.
kernel: $(STAMP) ## register the Jupyter kernel `analytics` inside .venv (nothing is written to your home)
	@$(PY) -c 'from analytics.reports.notebooks import register_kernel; print("kernel analytics:", "registered in $(VENV)" if register_kernel() else "up to date")'

# JupyterLab on notebooks/ (kernel `analytics`, ipywidgets and plotly included). The explorer (00)
# opens on LAB_ROWS rows (data/lake-LAB_ROWS with its views: made on first use, like the benchmark's
# data, and reused after), named to it in ANALYTICS_LAKE; the other notebooks' defaults point at the
# nbval data set, made first. The kernel is .venv's, first on JUPYTER_PATH (a kernel of the same name
# in your home would otherwise shadow it). Jupyter refuses root without --allow-root (CI and these
# machines run as root). LAB_ARGS are passed on, e.g. LAB_ARGS='--port 9999'.
LAB_ROWS ?= 1000000
LAB_ARGS ?=
lab: setup nbval-data ## open JupyterLab on notebooks/ (00_explore, the explorer, on LAB_ROWS=1000000 rows), LAB_ARGS='--port 9999 ...'
	@$(MAKE) --no-print-directory views ROWS=$(LAB_ROWS) SEED=0 DIRTY=0
	ANALYTICS_LAKE=$(abspath data/lake-$(LAB_ROWS)) JUPYTER_PATH=$(abspath $(VENV))/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH} \
		$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) \
		$(LAB_ARGS)

test: setup ## ruff, then pytest on tests/ (2 workers; the notebooks run once each, in tests/test_notebooks.py)
	@rc=0; \
	$(MAKE) --no-print-directory lint || rc=$$?; \
	$(MAKE) --no-print-directory test-py || rc=$$?; \
	exit $$rc

lint: setup ## ruff over analytics/ and tests/, then the package's import contracts (rules in pyproject.toml)
	$(VENV)/bin/ruff check analytics tests
	$(VENV)/bin/lint-imports --no-cache

test-fast: setup ## the quick loop: pytest without the tests marked slow or integration (under 2 minutes on 2 cores)
	$(PY) -m pytest $(XDIST) -m "not slow and not integration" $(PYTEST_ARGS) tests

test-py: setup ## pytest on tests/ only
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS) tests

# The generated-view differential test at a larger, random sample of the views the product can build
# (`make test` runs a fixed set of VIEW_SPACE_EXAMPLES=12).
VIEW_SPACE_EXAMPLES ?= 200
view-space: setup ## build VIEW_SPACE_EXAMPLES random view definitions and check each against the baseline
	VIEW_SPACE_EXAMPLES=$(VIEW_SPACE_EXAMPLES) VIEW_SPACE_RANDOM=1 $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_view_space.py -k every_buildable_view

test-nbval: setup nbval-data ## execute every notebook in place on data/nbval with its default parameters (nbval)
	$(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks

nbval-data: $(NBVAL_STAMP) ## the small clean and dirty data sets the notebooks' defaults point at

$(NBVAL_STAMP): $(wildcard analytics/query/*.py analytics/lake/*.py analytics/views/*.py) | $(STAMP)
	rm -rf $(NBVAL_DIR)
	$(ANALYTICS) generate --out $(NBVAL_DIR)/clean/raw --rows $(NBVAL_ROWS) --seed 0 --quiet
	$(ANALYTICS) prepare --raw $(NBVAL_DIR)/clean/raw --lake $(NBVAL_DIR)/clean/lake --quiet
	$(ANALYTICS) build --lake $(NBVAL_DIR)/clean/lake --quiet
	$(ANALYTICS) generate --out $(NBVAL_DIR)/dirty/raw --rows $(NBVAL_ROWS) --seed 1 --dirty 0.05 --quiet
	$(ANALYTICS) prepare --raw $(NBVAL_DIR)/dirty/raw --lake $(NBVAL_DIR)/dirty/lake --quiet
	touch $@

data: setup $(GENERATED) ## generate ROWS rows of raw CSV into data/raw-ROWS (reused when present)

$(GENERATED): | $(STAMP)
	rm -f $(RAW_DIR)/.generated-*
	$(ANALYTICS) generate --out $(RAW_DIR) --rows $(ROWS) --seed $(SEED) --dirty $(DIRTY)
	touch $@

lake: data ## prepare data/raw-ROWS into the lake data/lake-ROWS (incremental: a no-op when up to date)
	$(ANALYTICS) prepare --raw $(RAW_DIR) --lake $(LAKE_DIR) --memory-limit $(MEMORY_LIMIT)

views: lake ## build the materialized views of data/lake-ROWS
	$(ANALYTICS) build --lake $(LAKE_DIR)

# The benchmark: every phase timed with its peak RSS into data/phases-ROWS (kept with the data, so a
# reused lake still reports the prepare/build that made it), then every engine on the workloads with
# progress in the terminal, then notebook 03 renders the JSON, which is recorded under docs/benchmarks/
# and renders docs/benchmark.md and README's benchmark table. A mismatch with the baseline still
# writes the report (in red), then fails the target.
BENCH_REPEATS ?= 5
BENCH_WORKLOADS ?= queries/examples.json queries/judges.json
BENCH_JSON = $(REPORTS)/benchmark$(SUFFIX).json
PHASES_DIR := data/phases-$(DATA_TAG)
PHASE := $(ANALYTICS) bench phase --dir $(PHASES_DIR)
# Beside the engines: live ingest of one new part (1M rows; 5M at full scale) and the adaptive views
# (a second workload family before and after `build --adaptive`), each on a hard-linked copy of the
# lake in data/work, added to benchmark.json with their targets.
FRESH_ROWS := $(if $(filter 245000000,$(ROWS)),5000000,1000000)
FRESH_PART := data/part-$(FRESH_ROWS)-seed7/events_part_00000.csv
# 20 GiB at full scale: all of the second family from views needs ~15 GB there (two of its shapes
# barely aggregate; ARCHITECTURE.md, "Adaptive views and lake indexes"), written to data/work and removed after
ADAPTIVE_BUDGET ?= $(if $(filter 245000000,$(ROWS)),20GiB,2GiB)
WORK_DIR := data/work-$(DATA_TAG)

benchmark: setup ## data + lake + views for ROWS (or SCALE=full), every engine on examples + judges, reports/03_batch_benchmark.* + benchmark.json, docs/benchmark.md
	@echo "== benchmark at $(ROWS) rows: generate -> prepare -> build -> engines -> notebooks/03_batch_benchmark"
	@if [ ! -e $(GENERATED) ]; then \
		rm -f $(RAW_DIR)/.generated-*; \
		$(PHASE) generate -- $(ANALYTICS) generate --out $(RAW_DIR) --rows $(ROWS) --seed $(SEED) \
			--dirty $(DIRTY) && touch $(GENERATED); \
	else echo "data: reusing $(RAW_DIR)"; fi
	@$(PHASE) prepare -- $(ANALYTICS) prepare --raw $(RAW_DIR) --lake $(LAKE_DIR) --memory-limit $(MEMORY_LIMIT)
	@$(PHASE) build -- $(ANALYTICS) build --lake $(LAKE_DIR)
	@mkdir -p $(REPORTS); rm -f $(BENCH_JSON); rc=0; \
	$(ANALYTICS) benchmark --raw $(RAW_DIR) --lake $(LAKE_DIR) $(addprefix --workload ,$(BENCH_WORKLOADS)) \
		--repeats $(BENCH_REPEATS) --rows $(ROWS) --phases $(PHASES_DIR) --json $(BENCH_JSON) --no-summary || rc=$$?; \
	if [ ! -f $(BENCH_JSON) ]; then echo "benchmark: failed (exit $$rc) before writing $(BENCH_JSON)" >&2; exit $$rc; fi; \
	[ -f $(FRESH_PART) ] || $(ANALYTICS) generate --out $(dir $(FRESH_PART)) --rows $(FRESH_ROWS) --seed 7 --parts 1 --quiet; \
	echo "== live ingest: one $(FRESH_ROWS)-row part into a copy of $(LAKE_DIR)"; \
	$(ANALYTICS) bench freshness measure --lake $(LAKE_DIR) --raw $(RAW_DIR) --part $(FRESH_PART) \
		--work $(WORK_DIR)/freshness --into $(BENCH_JSON) >/dev/null || rc=$$?; \
	echo "== adaptive views: family A, then family B and judges before and after build --adaptive ($(ADAPTIVE_BUDGET))"; \
	$(ANALYTICS) bench adaptive --lake $(WORK_DIR)/adaptive --copy-of $(LAKE_DIR) --budget $(ADAPTIVE_BUDGET) \
		--into $(BENCH_JSON) || rc=$$?; \
	rm -rf $(WORK_DIR); \
	$(ANALYTICS) bench reports --lake $(LAKE_DIR) --raw $(RAW_DIR) --out $(REPORTS) --only 03_batch_benchmark \
		--suffix '$(SUFFIX)' -p rows=$(ROWS) -p result_json=$(abspath $(BENCH_JSON)) \
		-p 'sweep=$(abspath $(REPORTS))/benchmark-*.json' $(if $(REPORT_TIMEOUT),--timeout $(REPORT_TIMEOUT)); \
	echo; $(ANALYTICS) bench summary $(BENCH_JSON) \
		--report $(REPORTS)/03_batch_benchmark$(SUFFIX).html || rc=$$?; \
	$(ANALYTICS) bench docs --json $(BENCH_JSON) || rc=$$?; \
	exit $$rc

sweep: setup ## the benchmark at each size of SWEEP_ROWS (1M 5M 15M), reports/benchmark-ROWS.json, sweep.json and the chart
	@for rows in $(SWEEP_ROWS); do \
		$(MAKE) --no-print-directory benchmark ROWS=$$rows SUFFIX=-$$rows || exit $$?; \
	done
	$(ANALYTICS) bench sweep $(foreach n,$(SWEEP_ROWS),$(REPORTS)/benchmark-$(n).json) --out $(REPORTS)/sweep.json
	@echo "scale chart: $(REPORTS)/03_batch_benchmark-$(lastword $(SWEEP_ROWS)).html (section Scale sweep)"

ifdef LAKE
reports: setup ## run every notebook into reports/NN_name.{ipynb,html,results.html}: LAKE=path [RAW=path], or ROWS=n
	@$(ANALYTICS) bench reports --lake '$(LAKE)' $(if $(RAW),--raw '$(RAW)') --out $(REPORTS) \
		$(if $(REPORT_TIMEOUT),--timeout $(REPORT_TIMEOUT))
else
reports: views
	@$(ANALYTICS) bench reports --lake $(LAKE_DIR) --raw $(RAW_DIR) --out $(REPORTS) -p rows=$(ROWS) \
		$(if $(REPORT_TIMEOUT),--timeout $(REPORT_TIMEOUT))
endif

strip: setup ## strip outputs and execution counts from notebooks/*.ipynb (commit them stripped)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean: ## remove generated reports and the nbval data set (keeps data/raw-*, data/lake-* and .venv)
	find $(REPORTS) -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf $(NBVAL_DIR)
