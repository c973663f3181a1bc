# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
KERNEL := cdp-ml
DEMO_DIR ?= demo
DEMO_PERSONS ?= 2000
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test lab bench install lint clean

$(BIN)/cdp-ml: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "cdp-ml" >/dev/null
	touch $(BIN)/cdp-ml

install: $(BIN)/cdp-ml

demo: install
	$(BIN)/cdp-ml --workspace $(DEMO_DIR) demo --persons $(DEMO_PERSONS) --seed 7
	$(BIN)/cdp-ml --workspace $(DEMO_DIR) refresh --as-of latest

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check cdp_ml tests pipelines bench

lab: install
	@test -f $(DEMO_DIR)/cdp_ml.yaml || { echo "no workspace in $(DEMO_DIR): run 'make demo' first (or DEMO_DIR=your/workspace make lab)"; exit 2; }
	CDP_ML_WORKSPACE=$(abspath $(DEMO_DIR)) $(BIN)/jupyter lab --notebook-dir=notebooks

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(DEMO_DIR) runs
