# fusion-search — `make run` serves the demo on http://localhost:8000, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000
DATA   ?= ./data
test bench mutation: export HF_HUB_OFFLINE := 1

.PHONY: run test lint bench wrk browser postgres clean mutation docker-test scale-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Same install steps as the Dockerfile: torch + torchvision first, then the project.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

run: $(STAMP)
	FUSION_DATA_DIR=$(DATA) $(BIN)/fusion-search serve --demo --port $(PORT)

# Debian's chromium for the browser tests (never a browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

test: $(STAMP) browser wrk postgres
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check app models index tests bench
	$(BIN)/mypy

# Debian's PostgreSQL server binaries for the PostgreSQL catalog's tests, which start a throwaway
# cluster with initdb/pg_ctl (tests/pg_support.py; no service is used). Where apt (or sudo) is
# missing, those tests skip, and fail when CI is set.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq postgresql >/dev/null; fi; } || \
	  echo "PostgreSQL server not installed: its catalog tests skip (fail under CI)" >&2

# Debian's wrk drives the HTTP benchmark's searches (and its tests in `make test`); where apt
# (or sudo) is missing the install is skipped and bench http falls back to its httpx client.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null; fi; } || \
	  echo "wrk not installed: bench http drives its searches with httpx" >&2

bench: $(STAMP) wrk
	$(BIN)/fusion-search bench all

# Mutation testing of the search path (not in CI: about half an hour on two cores). Settings in
# pyproject.toml [tool.mutmut]; the functions mutated are these name patterns. docs/testing.md.
MUTANTS ?= 'app.service.xǁSearchServiceǁsearch_text__mutmut_*' \
	'app.service.xǁSearchServiceǁ_rerank__mutmut_*' 'app.service.xǁSearchServiceǁ_hits__mutmut_*' \
	'app.service.xǁSearchServiceǁsearch_vector__mutmut_*' \
	'app.service.xǁSearchServiceǁsearch_composed__mutmut_*' \
	'app.service.xǁSearchServiceǁexplain__mutmut_*' 'models.rerank.x_rerank_scores__mutmut_*' \
	'models.fusion.xǁAttentionFusionǁscore_from__mutmut_*' \
	'models.fusion.xǁAttentionFusionǁcompose__mutmut_*' \
	'index.store_search.x_vector_search__mutmut_*'
mutation: $(STAMP)
	$(BIN)/pip install --quiet "mutmut==3.8.1"
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 $(MUTANTS); $(BIN)/mutmut results

# The Docker image and compose file, built and run for real (installs Debian's docker.io and
# docker-compose where missing, starts an engine if none runs); FUSION_SKIP_DOCKER=1 skips it.
docker-test:
	scripts/docker-test.sh

# docker-compose.scale.yml for real: PostgreSQL + 2 API replicas + nginx, upload and search
# through nginx, one replica killed (in neither `make test` nor docker-test: docs/scaling.md).
scale-test:
	scripts/scale-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
