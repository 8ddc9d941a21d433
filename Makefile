# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench lint clean

# Demo users (jack/beanstalk, admin) unless DEMO_USERS=0; never in APP_ENV=production.
run: $(VENV)/.installed
	DEMO_USERS=$${DEMO_USERS:-1} $(BIN)/gunicorn -c gunicorn.conf.py app:app

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/sse_fanout.py --app channels
	$(BIN)/python bench/sse_fanout.py --app qa
	$(BIN)/python bench/login_cost.py
	$(BIN)/python bench/ticker_load.py
	$(BIN)/python bench/editor_ops.py
	$(BIN)/python bench/track_ingest.py
	$(BIN)/python bench/logproc.py
	$(BIN)/python bench/reload_drain.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-dev

clean:
	rm -rf $(VENV) instance .pytest_cache
