# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
# Each creates .venv and installs the project the first time (and again when
# pyproject.toml changes).

# Some machines (this one) export PYTHONDONTWRITEBYTECODE=1: every Python process then
# compiles every module it imports from source again, and the suite starts hundreds of them
# (kernels, CLI calls, servers); the first import writes __pycache__ and the rest reuse it
unexport PYTHONDONTWRITEBYTECODE

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# three workers on 2 cores: much of a test is a kernel or server starting or waiting (the
# machine sat idle ~28% of a two-worker run); tests of one server (E2B loopback, Jupyter
# servers) stay on one worker (tests/conftest.py). `make test PYTEST_PARALLEL=` runs in one process.
PYTEST_PARALLEL ?= -n 3 --dist loadgroup
PYTEST_ARGS ?= --durations=20

CHROMIUM := /usr/bin/chromium

.PHONY: serve test bench clean-venv

# --no-compile: pip byte-compiles every file of every package (~30 s of the ~70 s install on
# 2 cores); Python compiles the modules a process really imports on first use instead
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --no-compile -e '.[test]'
	@touch $(STAMP)

# the dashboard on ./.dsagent (filled with the demo runs the first time); Ctrl-C stops it
serve: $(STAMP)
	$(VENV)/bin/dsagent serve

# the browser tests drive Debian's chromium (Playwright's own browser download is not reachable)
$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# pytest fails with exit code 5 when nothing was collected, and tests/conftest.py
# makes a run in which no test ran fail the same way; make passes the code on
test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
