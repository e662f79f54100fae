# One place that sets the project up; `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
# The CPU machines this project is built on carry torch 2.14.1/torchvision 0.29.1 wheels locally;
# override TORCH_SPEC for another build (e.g. a CUDA index of your own).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.segladder-installed

.PHONY: setup demo test lint mutation bench-data clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segladder demo

# pytest's own exit code; fewer tests collected than the floor in tests/MIN_TESTS fails too.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --min-tests "$$(cat tests/MIN_TESTS)"

# Lint rules and the formatter (line length 110, pyproject.toml) are both enforced; CI runs this.
lint: $(STAMP)
	$(VENV)/bin/ruff check segladder tests
	$(VENV)/bin/ruff format --check segladder tests

# Mutation testing (docs/reliability.md): one-line mutations of the code behind each documented promise, each
# run against the tests that must catch it, in a scratch copy. Tens of minutes on 2 cores, so not part of CI.
mutation: $(STAMP)
	$(VENV)/bin/python scripts/mutation.py

bench-data: $(STAMP)
	$(VENV)/bin/segladder bench data

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
