# streamml — every target installs what it needs into .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXAMPLE ?= sensor_anomaly
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.$(EXAMPLE) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(PY) -m ruff check streamml operators examples benchmarks tests
	$(PY) -m ruff format --check streamml operators examples benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
