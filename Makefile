# One place that sets the project up; `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
# The CPU machines this project is built on carry torch 2.14.1/torchvision 0.29.1 wheels locally;
# override TORCH_SPEC for another build (e.g. a CUDA index of your own).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.segladder-installed
LOWEST_VENV ?= .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.segladder-installed

.PHONY: setup demo test check test-lowest gpu-smoke lint mutation bench-data clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev,scene,fetch,scene-test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segladder demo

# 0 when pytest passes, 2 (make's code for a failed recipe) when it fails; fewer tests collected than the
# floor in tests/MIN_TESTS fails too.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --min-tests "$$(cat tests/MIN_TESTS)"

# Every direct dependency at the lowest version pyproject.toml allows (scripts/lowest_constraints.py pins
# them), running the model and training tests. CI runs it. torch and torchvision keep TORCH_SPEC and are
# hard-linked from $(VENV), not installed again: a second CUDA build filled the CI machine's disk.
$(LOWEST_STAMP): $(STAMP) pyproject.toml Makefile scripts/lowest_constraints.py
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python scripts/lowest_constraints.py link torch torchvision --into $(LOWEST_VENV)
	$(VENV)/bin/python scripts/lowest_constraints.py pins > $(LOWEST_VENV)/lowest.txt
	$(LOWEST_VENV)/bin/python -m pip install -q --no-cache-dir -c $(LOWEST_VENV)/lowest.txt -e '.[dev]'
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(timm|lightning|torchmetrics|segmentation|albumentations|pydantic|numpy|torch)=='
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" tests/models tests/training

# scripts/gpu_check.sh's steps on the CPU at tiny sizes, so the GPU check cannot rot between GPU sessions.
gpu-smoke: $(STAMP)
	PYTHON=$(VENV)/bin/python bash scripts/gpu_check.sh --smoke --out .gpu-smoke

# Lint rules and the formatter (line length 110, pyproject.toml) are both enforced; CI runs this.
lint: $(STAMP)
	$(VENV)/bin/ruff check segladder tests
	$(VENV)/bin/ruff format --check segladder tests

# Lint, then every test not marked slow, medium or gpu: the loop to iterate in (625 of 909 tests, about two
# minutes on 2 idle cores; 3 min 16 s beside a training run, 2026-12-07). `make test` (all of them, with the MIN_TESTS floor) is what CI runs.
check: lint
	$(VENV)/bin/python -m pytest -q -m "not slow and not medium and not gpu"

# Mutation testing (docs/reliability.md): one-line mutations of the code behind each documented promise, each
# run against the tests that must catch it, in a scratch copy. Tens of minutes on 2 cores, so not part of CI.
mutation: $(STAMP)
	$(VENV)/bin/python scripts/mutation.py

bench-data: $(STAMP)
	$(VENV)/bin/segladder bench data

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .gpu-smoke .pytest_cache .ruff_cache
