# Two commands: `make demo` (the app on the default model) and `make test`.
# Both check the Debian packages first (and install the missing ones when
# run as root), then install qcnn into .venv when pyproject.toml, setup.py
# or the C sources changed since the last install.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qcnn-installed
PYTEST_ARGS ?=

ifeq ($(shell id -u),0)
SUDO :=
SYSTEM_CHECK := bash scripts/install-system-deps.sh
else
SUDO := sudo
SYSTEM_CHECK := bash scripts/install-system-deps.sh --check
endif

.PHONY: demo test system-deps system-check

demo: system-check $(STAMP)
	$(PY) main.py

test: system-check $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q $(PYTEST_ARGS)

system-deps:
	$(SUDO) bash scripts/install-system-deps.sh

system-check:
	@$(SYSTEM_CHECK)

$(PY):
	$(PYTHON) -m venv $(VENV)

# The venv is an order-only prerequisite: an existing one is reused as is.
$(STAMP): pyproject.toml setup.py $(wildcard qcnn/csrc/*.c qcnn/csrc/*.h) | $(PY)
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@
