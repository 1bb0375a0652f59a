# streamml — every target installs what it needs into .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXAMPLE ?= sensor_anomaly
DEMO_ARGS ?=
PYTEST_ARGS ?=
# make test runs the suite in 2 pytest-xdist workers (TEST_WORKERS=0 runs it in one process).
# Half of a one-process run's wall time is waiting (broker timeouts, paced flows, start-ups
# of subprocess flows), which the other worker fills: 280 s -> 168 s on 2 cores, same CPU.
# --dist loadfile keeps a file's tests in one worker, so a module fixture (a trained model,
# a shared reference run) is built once and two workers never write one cache file.
# It costs no balance: no file holds more than 7% of the suite (docs examples 112 s of
# 1670 s summed, 5 Dec), and files split over 2 workers as evenly as single tests would.
TEST_WORKERS ?= 2

.PHONY: setup demo test bench lint docs docs-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.$(EXAMPLE) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks $(if $(QUICK),--quick,)

# The site (MkDocs + Material, reference from docstrings) into site/; strict: a broken link,
# a missing reference or a docstring warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

lint: $(STAMP)
	$(PY) -m ruff check streamml operators examples benchmarks tests
	$(PY) -m ruff format --check streamml operators examples benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache site
