# leukoscope: `make demo` and `make test` each create or refresh .venv by themselves; `make test`
# also installs the Debian packages its tests need (SYSTEM_PACKAGES) when they are missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := web,ray,tune,stain,dev
export RAY_USAGE_STATS_ENABLED := 0
# Debian packages the tests need, as package:binary:tests, each checked by its binary (a glob: any
# PostgreSQL major version will do). `make test` installs the missing ones with apt-get when it may
# (root, or sudo without a password).
SYSTEM_PACKAGES := chromium:/usr/bin/chromium:tests/test_serve_browser.py \
                   postgresql:/usr/lib/postgresql/*/bin/initdb:tests/test_tune.py::test_two_machines_share_a_postgresql_study

.PHONY: venv system demo test test-slow lint typecheck benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

system:
	@missing=""; tests=""; \
	for entry in $(SYSTEM_PACKAGES); do \
	  pkg=$${entry%%:*}; rest=$${entry#*:}; \
	  found=""; for bin in $${rest%%:*}; do test -x "$$bin" && found=1; done; \
	  [ -n "$$found" ] || { missing="$$missing $$pkg"; tests="$$tests $${rest#*:}"; }; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "not installing Debian package(s)$$missing (not root, no password-less sudo): these tests will fail:$$tests"; exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "not installing Debian package(s)$$missing (no apt-get here): these tests will fail:$$tests"; exit 0; fi; \
	echo "installing Debian package(s)$$missing with apt-get"; \
	{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || echo "apt-get could not install$$missing: these tests will fail:$$tests"

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check src tests benchmarks
	PYTHONPATH=src $(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: venv system lint typecheck
	$(BIN)/pytest -q -n 2 --durations=15

test-slow: venv
	$(BIN)/pytest -q -n 2 -m slow

benchmark: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
