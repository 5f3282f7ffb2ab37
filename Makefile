# Forescale: the two commands of the README, plus a few helpers.
# `make run` and `make test` create the environment themselves (Python 3.11 + pip is enough).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(PYTHON) -m uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_COMPILE_BYTECODE := 1
export FORESCALE_HOME ?= $(CURDIR)/.forescale
export AIRFLOW_HOME ?= $(FORESCALE_HOME)/airflow
export GIT_PYTHON_REFRESH := quiet

.PHONY: run test test-browser setup pipeline serve bench lint clean

## Create .venv from uv.lock (Airflow, MLflow, Feast, GE, Evidently, Prophet, LightGBM, ...).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==0.13.8"
	$(UV) sync --locked --extra dev --python $(PYTHON)
	@touch $@

## Start Airflow, MLflow and the schedule API on localhost with a demo fleet; Ctrl-C stops it.
run: setup
	$(BIN)/forescale up

## Lint, format and type checks, then the test suite without the browser tests (.ci/run's first).
test: setup lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not browser"

## Browser tests: `forescale up` on free ports, its UIs in headless Chromium (Debian's chromium);
## screenshots in tests/artifacts/ (or $$FORESCALE_TEST_ARTIFACTS).
test-browser: setup
	$(BIN)/python -m pytest -p no:xdist -m browser tests/test_browser.py

## The pipeline once, in-process, on a synthetic fleet.
pipeline: setup
	$(BIN)/forescale pipeline run --services 5 --days 14

serve: setup
	$(BIN)/forescale serve --dev

## The benchmarks on ../shared/data (figures, not tests; docs/benchmarks/README.md).
bench: setup
	$(BIN)/forescale bench forecast --json bench-out/forecast.json --report bench-out/forecast.md
	$(BIN)/forescale bench replay --json bench-out/replay.json --cache bench-out/cache --report bench-out/replay.md
	$(BIN)/forescale bench nab --json bench-out/nab.json --doc bench-out/nab.md

## Lint, format and type checks (pre-commit runs the same).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(FORESCALE_HOME) .pytest_cache
