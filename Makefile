# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
# Each creates .venv and installs the project the first time (and again when
# pyproject.toml changes).

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

CHROMIUM := /usr/bin/chromium

.PHONY: serve test bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[test]'
	@touch $(STAMP)

# the dashboard on ./.dsagent (filled with the demo runs the first time); Ctrl-C stops it
serve: $(STAMP)
	$(VENV)/bin/dsagent serve

# the browser tests drive Debian's chromium (Playwright's own browser download is not reachable)
$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
