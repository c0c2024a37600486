# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both set the host up first (Debian packages, mounts) and build .venv; a second run only
# checks, so it is fast.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .stamps/venv
PYTHON := /usr/bin/python3

.PHONY: demo test setup host lint bench clean

demo: setup
	$(VENV)/bin/vnfkit demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m perf engine

lint: setup
	$(VENV)/bin/ruff check .

setup: host $(STAMP)

host:
	@./setup-host.sh

# Rebuilt when the pins, the package metadata or the libbpf binding change.
$(STAMP): requirements.txt setup.py pyproject.toml datapath/_libbpf_build.py datapath/_sockgen_build.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e .
	@mkdir -p $(dir $@) && touch $@

clean:
	rm -rf $(VENV) .stamps build *.egg-info datapath/_libbpf*.so datapath/_libbpf.c
