# Everything a fresh machine needs, from the project's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
HOST ?= 127.0.0.1
PORT ?= 3000

export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := true
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages models verify serve test soak clean-store loadtest slo bench bench-deps bench-peers

setup: $(VENV)/.installed system-packages

# Debian packages, installed where apt is available: Fashion-MNIST's four IDX files (without
# apt, export/fashion_mnist.py downloads them from the dataset's mirror, or says what to do);
# prometheus (and promtool) for the monitoring test, buildah and debootstrap to build and run
# the container image, wrk to drive the peer benchmark's test, chromium for the demo page's
# browser tests. Elsewhere, install them by hand (the names are Debian's); the tests that need
# one say so.
SYSTEM_PACKAGES := dataset-fashion-mnist prometheus buildah debootstrap wrk chromium

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "install these Debian packages by hand (no apt-get here):" $$missing; exit 0; fi; \
	echo "installing:" $$missing; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
		|| { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }

# torch first, pinned: its CPU build lies on this machine's disk, while a bare or open-ended
# torch requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,test]'
	touch $@

models: setup
	$(PY) -m export all --profile $(PROFILE)

verify: setup
	$(PY) -m export verify

# Serve every stored model; trains them first if any is missing or fails its check (and says why).
serve: setup
	@out=$$($(PY) -m export verify 2>&1) || { echo "$$out" | tail -n 15; echo "-> the stored models failed their check: make models"; $(MAKE) models; }
	$(VENV)/bin/bentoml serve service.service:ModelServe --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest -q

# Five minutes of mixed load on a server of its own (not part of `make test`): errors and the
# growth of the server's memory (RSS of its process tree). `make soak SOAK_MINUTES=1` for less.
SOAK_MINUTES ?= 5

soak: setup
	@$(PY) -m export verify >/dev/null 2>&1 || $(MAKE) models
	$(PY) -m load_tests.soak --minutes $(SOAK_MINUTES)

# Load test of a running service (starts none): `make loadtest URL=... USERS=16 DURATION=60s`,
# then `make slo` (or `make loadtest slo`) judges the stats against load_tests/slo.toml.
# The mix: LOCUST_WEIGHTS=classify_cnn=10,gan_generate=0 (see load_tests/locustfile.py).
URL ?= http://127.0.0.1:3000
USERS ?= 16
DURATION ?= 60s
LOADTEST_DIR ?= reports/loadtest

loadtest: setup
	@$(PY) -c "import requests, sys; sys.exit(requests.get('$(URL)/readyz', timeout=5).status_code != 200)" 2>/dev/null \
		|| { echo "no ready service at $(URL) (start one with 'make serve', or pass URL=...)"; exit 1; }
	mkdir -p $(LOADTEST_DIR) && rm -f $(LOADTEST_DIR)/locust_*.csv $(LOADTEST_DIR)/locust.html
	$(VENV)/bin/locust -f load_tests/locustfile.py --headless --host $(URL) -u $(USERS) -r $(USERS) -t $(DURATION) \
		--csv $(LOADTEST_DIR)/locust --html $(LOADTEST_DIR)/locust.html --only-summary --exit-code-on-error 0

slo: setup
	$(PY) -m load_tests.slo $(LOADTEST_DIR)/locust_stats.csv

# Benchmark on the stored models: reports/bench.md, bench.json and PNG plots, about 10 minutes
# (`make bench BENCH_ARGS=--quick` for a short run); exit status 1 when a target is missed. The
# load generator is wrk, from apt.
BENCH_ARGS ?=

bench: setup bench-deps
	@$(PY) -m export verify >/dev/null 2>&1 || $(MAKE) models
	$(PY) -m load_tests.bench $(BENCH_ARGS)

bench-deps: $(VENV)/.bench-installed
	@command -v wrk >/dev/null 2>&1 || $(SUDO) apt-get install -y wrk || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }

# This service against the servers users would pick instead (LitServe, Ray Serve, TorchServe,
# MLServer, a plain BentoML service) on the same stored cnn: reports/bench-peers.md, .json, .png.
# Each peer is installed into a venv of its own under .peers/ (their pins conflict with one
# another and with the service's); TorchServe needs Java, from apt. A peer that cannot be set up
# is reported with the reason and the rest go on. Exit status 1 when a goal is missed.
PEERS_ARGS ?= --rounds 3

bench-peers: setup bench-deps
	-@command -v java >/dev/null 2>&1 || $(SUDO) apt-get install -y openjdk-17-jre-headless || { $(SUDO) apt-get update && $(SUDO) apt-get install -y openjdk-17-jre-headless; }
	@$(PY) -m export verify >/dev/null 2>&1 || $(MAKE) models
	$(PY) -m load_tests.bench.peers_run $(PEERS_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# The serving bento as one archive: service code, serving requirements (no torch) and every
# stored model, built offline from the store in BENTOML_HOME (`lock_packages: false`; bentoml
# calls uv, from the test extra). Then `bentoml containerize` (README, Deploy).
BENTO_ARCHIVE ?= dist/modelserve.bento
.PHONY: bento

bento: setup
	$(VENV)/bin/bentoml build
	mkdir -p $(dir $(BENTO_ARCHIVE)) && rm -f $(BENTO_ARCHIVE)
	$(VENV)/bin/bentoml export modelserve:latest $(BENTO_ARCHIVE)

clean-store:
	rm -rf $(BENTOML_HOME)
