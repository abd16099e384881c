# Everything a fresh machine needs, from the project's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
HOST ?= 127.0.0.1
PORT ?= 3000

export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := true

.PHONY: setup models verify serve test clean-store

setup: $(VENV)/.installed

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

# Serve every stored model; trains them first if any is missing or fails its check.
serve: setup
	@$(PY) -m export verify >/dev/null 2>&1 || $(MAKE) models
	$(VENV)/bin/bentoml serve service.service:ModelServe --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest -q

clean-store:
	rm -rf $(BENTOML_HOME)
