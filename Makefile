# probprune — every target sets itself up from nothing (a fresh clone needs only python3 >= 3.10).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test data lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: on these machines the CPU build of 2.13.0 lies on disk (an unpinned
	# torch would pull a multi-GB CUDA build); pyproject keeps torch>=2.4 for everyone else.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/probprune verify

data: setup
	-$(BIN)/probprune data prepare mnist
	-$(BIN)/probprune data prepare fashion-mnist

# one pytest worker per core (pytest-xdist), a test file per worker at a time: the suite's files share
# module-level fixtures, and a file stays in one process as it does under plain `pytest`
test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_verify.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
