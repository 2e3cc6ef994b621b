# amcsearch: `make setup`, then `make demo` (the main job) or `make test` (the whole suite).
SHELL := /bin/bash
PYTHON_SYSTEM ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/services:$(CURDIR)
# Corpus/model size: the demo size locally, the tiny one in CI (same code path).
MODEL_SIZE ?= $(if $(CI),ci,demo)
SEED ?= 0
UNTUNED_SEED ?= 7
MODELS := text_encoder image_encoder keyword_tagger amc_rescorer composer ynet_shop ynet_street ctx_ynet
MODEL_FILES := $(foreach m,$(MODELS),model_repository/$(m)/1/model.pt) model_repository/keyword_tagger/placements.txt
# placements.txt: a repository exported before the tagger said where things are is retrained
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.lock | cut -c1-12)

.PHONY: help setup chromium proto models export eval eval-untuned composer-seeds layout-directions check-index up demo test test-unit test-integration bench loadtest lint clean redis-server prometheus

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: $(STAMP) redis-server chromium prometheus proto ## venv with the pinned dependencies, generated code, redis-server, chromium, prometheus

$(STAMP): requirements.lock
	@echo "== setup: virtualenv $(VENV) with requirements.lock"
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

redis-server: ## install the redis-server OS package when it is missing
	@if command -v redis-server >/dev/null; then echo "== setup: redis-server present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== setup: installing redis-server (apt-get)"; apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	else echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server) or set REDIS_URL"; fi

chromium: ## install headless Chromium (the HTML report test opens the page in it) when missing
	@if command -v chromium >/dev/null; then echo "== setup: chromium present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== setup: installing chromium (apt-get)"; apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing: install it (e.g. sudo apt-get install chromium) for the HTML report test"; fi

prometheus: ## install the prometheus OS package (server and promtool) when missing
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then echo "== setup: prometheus present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== setup: installing prometheus (apt-get)"; apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; \
	else echo "prometheus is missing: install it (e.g. sudo apt-get install prometheus) for the observability tests"; fi

proto: $(STAMP) ## generate services/amcsearch/v1 from protos/
	@echo "== proto: generating services/amcsearch/v1"
	@mkdir -p services/amcsearch/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services --grpc_python_out=services --pyi_out=services protos/amcsearch/v1/*.proto
	@touch services/amcsearch/v1/__init__.py

models: $(STAMP) ## train every model and export model_repository/ (MODEL_SIZE=ci|demo|full), if missing
	@if [ -n "$(FORCE)" ] || ! ls $(MODEL_FILES) >/dev/null 2>&1; then \
	  echo "== models: training at size $(MODEL_SIZE), seed $(SEED)"; \
	  $(PY) -m models.train --size $(MODEL_SIZE) --seed $(SEED) --repository model_repository --checkpoints build/checkpoints; \
	else echo "== models: model_repository is built (FORCE=1 to retrain)"; fi

export: $(STAMP) ## rewrite model_repository/ from the checkpoints of the last `make models` (no training)
	$(PY) -m models.export --size $(MODEL_SIZE) --checkpoints build/checkpoints --repository model_repository

eval: models ## evaluate on the held-out split and write benchmarks/QUALITY.md
	@echo "== eval: size $(MODEL_SIZE)"
	$(PY) -m models.eval --size $(MODEL_SIZE) --seed $(SEED) --checkpoints build/checkpoints --out benchmarks/QUALITY.md

eval-untuned: models ## the same evaluation on a corpus of another seed (UNTUNED_SEED, 7) that no model or setting saw: benchmarks/QUALITY_UNTUNED.md
	$(PY) -m models.eval --size $(MODEL_SIZE) --seed $(UNTUNED_SEED) --checkpoints build/checkpoints --out benchmarks/QUALITY_UNTUNED.md

composer-seeds: models ## retrain concat, TIRG (global, region grid) and LBF with 5 seeds, R@1 on TEST per run: benchmarks/COMPOSER_SEEDS.md (~26 min on Zen 4)
	$(PY) -m models.eval.composer_seeds --size $(MODEL_SIZE) --seed $(SEED) --seeds 5 --checkpoints build/checkpoints --out benchmarks/COMPOSER_SEEDS.md

layout-directions: models ## retrain AMC with each way of using its where head, score them on validation: benchmarks/LAYOUT.md (~10 min)
	$(PY) -m models.eval.layout --size $(MODEL_SIZE) --seed $(SEED) --checkpoints build/checkpoints --out benchmarks/LAYOUT.md

# ARGS passes options through: make up ARGS=--free-ports, make loadtest ARGS="--shape step".
ARGS ?=
up: setup models ## start Triton, Redis and every service; Ctrl-C stops them all (ARGS=--free-ports)
	$(PY) -m amcsearch.launcher $(ARGS)

demo: setup models ## start the stack, index the demo corpus, run example searches
	$(PY) -m tools.demo --size $(MODEL_SIZE) --seed $(SEED)

test: lint models ## lint, then unit and integration tests (real tritonserver, redis-server, services)
	$(PY) -m pytest tests -q

test-unit: setup ## unit tests only
	$(PY) -m pytest tests/unit -q

SCALE ?= 1k,10k
bench: setup models ## measure and write benchmarks/RESULTS.md (SCALE=1k,10k,100k for the whole curve)
	$(PY) -m benchmarks.run --scale $(SCALE) --out benchmarks/RESULTS.md

INDEX_URI ?= var/index.sqlite
check-index: setup ## verify the embedded index (INDEX_URI, default var/index.sqlite); ACCEPT_LOSS=1 to serve one that lost writes
	$(PY) -m amcsearch.search.check_index --uri $(INDEX_URI) $(if $(ACCEPT_LOSS),--accept-loss)

loadtest: setup models ## bounded locust run on loopback, prints p50/p95/p99 (ARGS="--shape step")
	$(PY) -m loadtests.run $(ARGS)

LINTED := services models tests benchmarks loadtests tools deploy/docker
lint: setup ## ruff (rules and format) and mypy, as CI runs them
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	cd services && ../$(VENV)/bin/mypy --config-file ../pyproject.toml amcsearch

clean: ## remove generated code, build outputs and logs (keeps the venv)
	rm -rf services/amcsearch/v1/*_pb2*.py* build var model_repository/*/1 .pytest_cache
