# Two commands do all set-up: `make demo` and `make test` create or reuse .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= all
PYTEST_ARGS ?=
# Test processes (pytest-xdist); --dist loadfile keeps a module, and its module-scoped servers and
# trained fixtures, in one process.
TEST_WORKERS ?= 2

.PHONY: venv demo reproduce test test-all lint bench clean

# Reinstalls when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@# A venv left half-made (no working pip) by an interrupted run is rebuilt from scratch.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python infra/demo.py

# The paper's claim at sample scale: the demo's stages with a bigger budget (sized for under 2
# hours on an idle 2-core CPU), into runs/reproduce/; resumable like the demo.
reproduce: $(STAMP)
	$(BIN)/python infra/demo.py --profile reproduce

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Lint rules only: the code is wrapped by hand at 100 columns (big_vision's style), which
# `ruff format` would rewrite wholesale (~3,800 lines), so the formatter is not part of the check.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
