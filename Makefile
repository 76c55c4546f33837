# segsweep: `make help` lists the targets. Set-up is idempotent and quick once installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install train test test-slow test-cluster lint wheel clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install segsweep with its dependencies (torch as constraints.txt pins)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# constraints.txt: this machine's torch/torchvision (from local disk), kept out of the package metadata
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@# Older checkouts installed hydra-optuna-sweeper (Optuna 2): segsweep ships its own sweeper now.
	$(BIN)/python -m pip uninstall -q -y hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

train: install ## train the default: synthetic binary shapes, U-Net (ARGS="model=fpn ..." to change)
	$(BIN)/segsweep-train $(ARGS)

test: install ## run the test suite (CPU, under 10 minutes on 2 cores; two pytest workers, one per core)
	$(BIN)/pytest -q -n 2 $(ARGS)

test-slow: install ## run the slow checks: real data (../shared/datasets), the wheel installed in a fresh venv
	$(BIN)/pytest -q -m slow $(ARGS)

test-cluster: install ## run tests/cluster on a real SLURM + PostgreSQL they start here (root; apt-get installs them)
	$(BIN)/pytest -q -m cluster $(ARGS)

lint: install ## ruff
	$(BIN)/ruff check src tests scripts

wheel: install ## build dist/segsweep-*.whl (configs included) to `pip install` anywhere
	rm -rf build  # setuptools would ship files left there by an older build
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .

clean: ## remove outputs (runs, sweeps), builds and caches
	rm -rf outputs build dist .pytest_cache
