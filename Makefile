# Two entry points that work on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint typecheck clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The demo and the README's next steps after it: serve (the app, `lookupctl serve`) and plot
# (`inspect --plot`, `evaluate --plot`). torch is left to `make test` (large); README says how to add it.
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[serve,plot]'
	touch $@

# Everything the test suite uses. torch==2.13.0 first so that the CPU build is taken, not a CUDA one.
$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[serve,torch,plot,store,dev]'
	touch $@

demo: $(VENV)/.demo-installed
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
