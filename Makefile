# Two entry points (see README): `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package of the venv, pinned with hashes; `make lock` rewrites it from pyproject.toml (scripts/lock.py).
LOCK := requirements.lock
# swebench's grading code without its dependencies (see the file), apart from the lock: .venv/swebench.
SWEBENCH_REQ := images/swebench-grader/requirements.txt
# Re-install when the lock, the swebench pins or this recipe changes.
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) $(SWEBENCH_REQ) Makefile | sha256sum | cut -c1-12)
# The installer is the lock's own uv, so set-up needs nothing but Python and pip to begin with.
UV_PIN := $(shell grep -m1 -o '^uv==[^ ]*' $(LOCK))
# The lock pins the CPU build of torch (torch==2.13.0+cpu), never the CUDA wheels PyPI serves: uv takes it
# from a local folder where the machine keeps it for pip (environment or pip.conf), else from the PyTorch
# CPU index's torch page.
export UV_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),\
	https://download.pytorch.org/whl/cpu/torch/)
DATA ?= ../shared/data

.PHONY: setup system run test lint lock corpus repos bench e2e-system images e2e
setup: system $(STAMP)

# Debian packages by name, installed when missing: bubblewrap runs the candidates' sandbox; chromium is the
# browser the dashboard's tests drive through playwright's executable_path (never `playwright install`,
# which downloads a browser of its own).
system:
	@command -v bwrap >/dev/null && test -x /usr/bin/chromium || \
		{ apt-get update -q && apt-get install -y -q bubblewrap chromium; }

$(STAMP): $(LOCK) $(SWEBENCH_REQ)
	# Debian's own python3 ships venv separately (python3-venv); install it when it is missing.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update -q && apt-get install -y -q python3-venv \
		&& $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check $(UV_PIN)
	# Exactly the lock, nothing resolved: packages it does not list are removed, hashes are checked.
	$(BIN)/uv pip sync -q --python $(BIN)/python --require-hashes $(LOCK)
	# The project itself, with the lock's setuptools and no dependency resolution.
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	# The grader image's swebench, pinned with hashes, for tests/test_swebench.py's grading tests (not on sys.path
	# otherwise: the tests add it).
	rm -rf $(VENV)/swebench && $(BIN)/uv pip install -q --python $(BIN)/python --no-deps --require-hashes \
		--target $(VENV)/swebench -r $(SWEBENCH_REQ)
	rm -f $(VENV)/.installed-* && touch $@

# Refresh the lock after a change to pyproject.toml's dependencies (tests/test_lock.py fails until then);
# other pins stay. `make lock ARGS=--upgrade` moves everything to the newest versions.
lock: setup
	$(BIN)/python scripts/lock.py $(ARGS)
	$(MAKE) setup

run: setup
	$(BIN)/agentq tasks build --source humanevalfix --data-dir $(DATA) --out data/humanevalfix.jsonl
	$(BIN)/agentq round run examples/quickstart.yaml

# The full DebugBench corpus with 10 hidden differential tests per task, and the sandbox benchmark.
corpus: setup
	$(BIN)/agentq tasks build --source debugbench --data-dir $(DATA) --out data/debugbench.jsonl --hidden 10

# Repository tasks from the 15 sdists in $(DATA)/repos (resumable: rerun after an interruption), JOBS mutants at
# once (each a pytest run in its own scratch tree). On Kubernetes the same command runs one pod per library shard:
# `python -m controller.corpus build` (docs/repo-agent.md).
JOBS ?= 2
repos: setup
	$(BIN)/agentq tasks build --source repos --data-dir $(DATA) --out data/repos.jsonl --jobs $(JOBS)

bench: setup
	$(BIN)/agentq sandbox bench --data-dir $(DATA)

test: setup
	$(BIN)/ruff check agentq controller tests benchmarks scripts
	# The operator tests need kube-apiserver, kube-controller-manager and etcd: built once, cached outside the repo (scripts/testenv.sh).
	bins="$$(scripts/testenv.sh)" && AGENTQ_TESTENV_BIN="$$bins" $(BIN)/python -m pytest -q -rs

# The real single-node cluster's host parts (Debian packages by name, installed when missing): containerd + runc,
# the CNI plugins, iptables (kube-proxy), dnsmasq (the cluster DNS), debootstrap + buildah (the images' local
# base and their builds), gcc + libc6-dev (the pause binary), dpkg-dev (the Kubernetes source package).
E2E_PACKAGES := runc containerd containernetworking-plugins iptables conntrack dnsmasq-base debootstrap buildah \
	gcc libc6-dev dpkg-dev openssl
e2e-system:
	@missing=""; for p in $(E2E_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi

# The images (controller, sandbox, CPU infer and train) built with buildah, cached by content (tests/e2e/images.py).
images: setup e2e-system
	PYTHONPATH=tests nice -n 10 $(BIN)/python -m e2e.images --json

# A round and a campaign in real pods on a real single-node cluster (tests/e2e): the cluster is brought up,
# the images built and imported, the chart installed with helm, every scenario run, everything torn down; one
# JSON object last. kubelet, kube-scheduler and kube-proxy build once from the Kubernetes source (cached).
e2e: setup e2e-system
	bins="$$(scripts/testenv.sh --node)" && AGENTQ_TESTENV_BIN="$$bins" PYTHONPATH=tests $(BIN)/python -m e2e.run

lint: setup
	$(BIN)/ruff check agentq controller tests benchmarks scripts
