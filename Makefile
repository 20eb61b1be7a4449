# The two commands of the README: `make demo` and `make test`. Both create the
# virtualenv (.venv) on first use and install the pinned stack (requirements-ci.txt).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON_SYSTEM ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.repseg-installed
# pip's local package mirrors print one harmless warning per package; hide those lines.
QUIET_PIP := 2>&1 | { grep -v '^WARNING: Location' || true; }

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): requirements-ci.txt setup.py
	@echo "==> setting up $(VENV) with $(PYTHON_SYSTEM) (pinned stack: requirements-ci.txt)"
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	@time ( $(PY) -m pip install -q -r requirements-ci.txt $(QUIET_PIP) && \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . $(QUIET_PIP) )
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) work_dirs data/toy_city data/toy_imagenet .pytest_cache
