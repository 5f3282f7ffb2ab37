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

## The test suite without the browser tests (what .ci/run calls first).
test: setup
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

## The three benchmarks on ../shared/data (figures, not tests).
bench: setup
	$(BIN)/forescale bench forecast --json bench-out/forecast.json
	$(BIN)/forescale bench replay --json bench-out/replay.json --plots bench-out/replay
	$(BIN)/forescale bench nab --json bench-out/nab.json

## Lint, format and type checks (what .ci/run and pre-commit run before the tests).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(FORESCALE_HOME) .pytest_cache
