# Two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv and install the package into it when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test bench clean redis-server promtool postgresql chromium test-fast docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ray-pipeline demo --config configs/demo.yaml

# Two pytest workers, each with its own local Ray, take whole files (module fixtures are built once),
# longest files first (tests/conftest.py): much of the suite waits on Ray start-up, Serve and
# wall-clock monitoring windows, so two workers on two cores finish well before one.
TEST_WORKERS ?= 2

test: $(STAMP) redis-server promtool postgresql chromium
	$(BIN)/lint-imports
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  --durations=30

# The inner loop while developing (about a minute): everything not marked slow. `make test` is
# still what guards behaviour and what CI runs.
test-fast: $(STAMP) redis-server promtool postgresql chromium
	$(BIN)/lint-imports
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests -m "not slow"

# Tests start their own redis-server on a free port; install the Debian package when we can.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server not found: Redis tests will be skipped (apt-get install -y redis-server)"; \
	  fi; }

# The alert-rule tests run the real `promtool` (Debian's prometheus package); same policy as redis-server.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "promtool not found: Prometheus rule tests will be skipped (apt-get install -y prometheus)"; \
	  fi; }

bench: $(STAMP) redis-server
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/features.py

# docs/configuration.md from the config models (tests/test_config_reference.py fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m ray_pipeline.config.reference > docs/configuration.md

clean:
	rm -rf data/demo .pytest_cache

# The registry tests start their own PostgreSQL server (initdb in a temp dir, a free port, run as
# the postgres user); Debian's package puts the server programs in /usr/lib/postgresql/*/bin.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else \
	    echo "PostgreSQL not found: registry tests on PostgreSQL will be skipped (apt-get install -y postgresql)"; \
	  fi; }

# The console's browser tests drive Debian's chromium through Playwright (`playwright install`
# cannot download browsers on a closed network); same policy as redis-server.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "chromium not found: console browser tests will be skipped (apt-get install -y chromium)"; \
	  fi; }
