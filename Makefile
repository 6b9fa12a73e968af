# The two set-up commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow test-sweep lint data bench clean

demo: $(VENV)/.installed
	$(BIN)/sgdstab demo

# The default suite, then the sweeps' slow tests that the issue asks CI to run (kill and resume, Ray).
test: data $(VENV)/.installed-test
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest -m slow tests/sweep

test-slow: data $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow

# The sweeps' slow tests: the CLI killed with SIGKILL and resumed, two sweeps at once, a dead worker, and the Ray
# executor on a local Ray instance (ray comes with the test extra). `make test` runs them after the default suite.
test-sweep: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow tests/sweep

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

# The peers (PyHessian, curvlinops) live in their own environment, benchmarks/.env (see benchmarks/README.md).
bench:
	@[ -x benchmarks/.env/bin/python ] || bash benchmarks/setup_peers.sh
	benchmarks/.env/bin/python benchmarks/bench_curvature.py --threads 1

# Debian's dataset-fashion-mnist holds the full Fashion-MNIST; the tests of the real loader use it.
data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) ; \
	else echo "note: $(FASHION_MNIST_DIR) is missing; run 'sudo apt-get install dataset-fashion-mnist' to test the full loader"; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
