# The two commands of the README: `make run` (the main job on the embedded default) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/forma-fitness.yaml
OUT ?= out/forma-fitness

.PHONY: setup run build test lint clean

setup:
	bash scripts/setup.sh

build: setup
	$(BIN)/forma build $(RECIPE) --out $(OUT)

run: setup
	$(BIN)/forma loop $(RECIPE) --out out/loop

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -ra --durations=25

clean:
	rm -rf out build .pytest_cache .mypy_cache .ruff_cache
