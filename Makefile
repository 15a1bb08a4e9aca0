# Two commands: `make demo` (the main job, end to end) and `make test`.
# Both create .venv and install the pinned dependencies on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export TAPESTRY_DATA_DIR ?= $(abspath ../shared/data)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export JAX_PLATFORMS ?= cpu

.PHONY: venv test demo clean-demo

$(VENV)/.installed: requirements.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c requirements.lock
	touch $@

venv: $(VENV)/.installed

test: venv
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

demo: venv
	$(PY) -m pipelines.run_demo
