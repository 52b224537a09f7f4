# Two entry points that work on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint typecheck clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Serving deps only: enough for the CPU demo.
$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[serve]'
	touch $@

# Everything the test suite uses. torch==2.13.0 first so that the CPU build is taken, not a CUDA one.
$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[serve,torch,plot,store,dev]'
	touch $@

demo: $(VENV)/.serve-installed
	$(PY) -m serving.demo

# The import contracts first (pyproject.toml [tool.importlinter]): the layout is part of the tests.
test: $(VENV)/.dev-installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	$(PY) -m bench.run_all

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check controller lookupctl serving moe tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
