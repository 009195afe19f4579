# The two commands of the README:
#   make demo   — install everything into .venv, generate a synthetic dataset, run the whole pipeline
#   make test   — install everything into .venv and run the whole test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: demo test install system-deps lint bench gpu-check clean

demo: install
	$(VENV)/bin/stapipe demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# ffmpeg/ffprobe for extraction, Chromium for the browser tests: Debian packages, installed only
# when missing (needs root or sudo; elsewhere install them with your package manager).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing fonts-dejavu-core; \
	fi

# ruff, then mypy over sta_models, db, worker, dashboard and stapipe_settings ([tool.mypy] in
# pyproject.toml; tests/test_typecheck.py runs the same check, so CI fails on a type error too).
lint: install
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

bench: install
	$(PY) bench/run_all.py

# The paper preset on a GPU (issue 17): one run of under 8 minutes, its table appended to
# bench/RESULTS.md with the machine. On a CPU-only machine use `bench/gpu_check.py --small`.
gpu-check: install
	$(PY) bench/gpu_check.py --write-results

clean:
	rm -rf var test-artifacts .pytest_cache
