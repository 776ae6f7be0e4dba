# Pointsman developer commands. Each target installs what it needs on first use.
#   make up     start the whole stack locally (pointsman up); ARGS="--port 9090" passes flags
#   make test   run the test suite (what CI runs)
#   make lint   ruff + mypy

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= shim,picker,collector,classifier,train,sim,stack,dev
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma  := ,
PYTEST_ARGS ?=

.PHONY: install system-deps up test lint format clean bench-overhead

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) system-deps

# redis-server (picker state, semantic cache tests) and docker-compose (to check the compose file)
# come from the system's packages; installed here when missing and we may (root + apt).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || $(MAKE) --no-print-directory _apt PKGS=redis-server
	@command -v docker-compose >/dev/null 2>&1 || $(MAKE) --no-print-directory _apt PKGS=docker-compose

_apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(PKGS) with apt-get"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PKGS) >/dev/null; \
	else \
		echo "note: $(PKGS) not found and cannot be installed here (not root or no apt-get); tests that need it will skip or fail"; \
	fi

up: install
	$(BIN)/pointsman up $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-overhead: install
	$(BIN)/python -m bench.overhead $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
