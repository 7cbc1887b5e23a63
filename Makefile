# Two commands matter: `make run` and `make test`. Each installs what is missing first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
HELPER := src/agentbox/sandbox/agentbox-exec
DATA_DIR ?= $(CURDIR)/.agentbox
HOST ?= 127.0.0.1
PORT ?= 8000
NETWORK ?= workspace_net
# More than one: that many replicas on $(HOST):$(PORT) (SO_REUSEPORT) over a PostgreSQL of their own.
REPLICAS ?= 1
export WORKSPACE_IMAGE ?= agentbox/workspace:bookworm

UI_VENDOR := src/agentbox/ui/vendor

.PHONY: setup venv host helper image ui browser run test unit integration lint doctor bench clean

setup: venv helper host image ui

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "==> Python environment in $(VENV)"
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

helper: $(HELPER)
$(HELPER): $(wildcard src/agentbox/sandbox/*.c src/agentbox/sandbox/*.h) $(VENV)/.installed
	@echo "==> building the in-workspace helper $@"
	@$(BIN)/python -c 'from agentbox.sandbox import build; build(strict=True)'

host:
	@bash scripts/setup-host.sh

ui: $(UI_VENDOR)/xterm.mjs
$(UI_VENDOR)/xterm.mjs: ui/package.json ui/package-lock.json scripts/build-ui.sh
	@bash scripts/build-ui.sh

# Debian's Chromium, which the dashboard's browser tests drive.
browser:
	@bash scripts/setup-browser.sh

image: host
	@bash scripts/build-image.sh "$(WORKSPACE_IMAGE)"
	@bash scripts/build-e2b-image.sh "$(WORKSPACE_IMAGE)"

# Serve on $(HOST):$(PORT) with workspaces enabled; the API key and the key that seals secrets
# (GITHUB_APP_ENCRYPTION_KEY, unless set) are made once and kept in $(DATA_DIR).
run: setup
	@mkdir -p "$(DATA_DIR)" && chmod 700 "$(DATA_DIR)"
	@test -s "$(DATA_DIR)/api-key" || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$(DATA_DIR)/api-key")
	@test -s "$(DATA_DIR)/encryption-key" || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_hex(32))' > "$(DATA_DIR)/encryption-key")
	@echo "==> API key (owner 'admin'): $$(cat "$(DATA_DIR)/api-key")"
	@echo "    try: curl -H \"Authorization: Bearer $$(cat "$(DATA_DIR)/api-key")\" -X POST http://$(HOST):$(PORT)/api/v1/workspaces"
	@export GITHUB_APP_ENCRYPTION_KEY="$${GITHUB_APP_ENCRYPTION_KEY:-$$(cat "$(DATA_DIR)/encryption-key")}"; \
	if [ "$(REPLICAS)" != 1 ]; then \
	  DATA_DIR="$(DATA_DIR)" HOST=$(HOST) PORT=$(PORT) NETWORK="$(NETWORK)" API_KEY="$$(cat "$(DATA_DIR)/api-key")" \
	    exec bash scripts/run-replicas.sh "$(REPLICAS)"; \
	fi; \
	ENABLE_AGENT_WORKSPACES=true WORKSPACE_DATA_DIR="$(DATA_DIR)" WORKSPACE_NETWORK_NAME="$(NETWORK)" \
	  WORKSPACE_API_KEYS="admin:$$(cat "$(DATA_DIR)/api-key")" \
	  exec $(BIN)/agentbox serve --host $(HOST) --port $(PORT)

test: setup browser lint
	$(BIN)/pytest -q tests

unit: venv helper
	$(BIN)/pytest -q tests/unit

integration: setup browser
	$(BIN)/pytest -q tests/integration

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup browser
	$(BIN)/python bench/run.py

doctor: venv helper
	$(BIN)/agentbox doctor

clean:
	rm -rf $(VENV) $(HELPER) .pytest_cache .mypy_cache .ruff_cache ui/node_modules $(UI_VENDOR)
