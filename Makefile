# fusion-search — `make run` serves the demo on http://localhost:8000, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000
DATA   ?= ./data
test bench: export HF_HUB_OFFLINE := 1

.PHONY: run test lint bench wrk browser clean

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

test: $(STAMP) browser wrk
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check app models index tests bench
	$(BIN)/mypy

# Debian's wrk drives the HTTP benchmark's searches (and its tests in `make test`); where apt
# (or sudo) is missing the install is skipped and bench http falls back to its httpx client.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null; fi; } || \
	  echo "wrk not installed: bench http drives its searches with httpx" >&2

bench: $(STAMP) wrk
	$(BIN)/fusion-search bench all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
