# leukoscope: `make demo` and `make test` each create or refresh .venv by themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := web,ray,tune,stain,dev
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test test-slow lint typecheck benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check src tests benchmarks

typecheck: venv
	$(BIN)/mypy

test: venv lint typecheck
	$(BIN)/pytest -q -n 2 --durations=15

test-slow: venv
	$(BIN)/pytest -q -n 2 -m slow

benchmark: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .mypy_cache
