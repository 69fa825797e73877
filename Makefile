# One virtual environment, made on first use, so the README's commands work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint check-migrations bench dist clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

install: $(STAMP)

# The demo's sandbox (moto's server) is the `demo` extra, installed into .venv above.
demo: $(STAMP)
	$(BIN)/connect-access demo --grant-seconds 5

test: $(STAMP)
	$(BIN)/ruff check bot tests bench tools migrations
	$(BIN)/mypy
	$(BIN)/connect-access catalog validate
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check bot tests bench tools migrations
	$(BIN)/mypy

# The sdist and the wheel (with the catalog, migrations and alembic.ini inside) in dist/.
dist: $(STAMP)
	rm -rf dist && mkdir dist
	$(BIN)/python -c "from setuptools import build_meta as b; b.build_sdist('dist'); b.build_wheel('dist')"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
