# The portability broker. Needs only Python 3.11+; everything else is installed into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INPUT ?=
STAMP := $(VENV)/.installed

.PHONY: install run demo test test-unit bench contracts migration clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(PY) -m shared.cli run $(if $(INPUT),--input $(INPUT))

demo: install
	$(PY) -m shared.cli demo $(if $(INPUT),--input $(INPUT))

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

migration: install
	$(PY) -m shared.migrations revision $(SERVICE) "$(MESSAGE)"

contracts: install
	$(PY) -m examples.contracts

clean:
	rm -rf var .pytest_cache

bench: install
	$(PY) -m benchmarks.transfer
	$(PY) -m benchmarks.consent_log
