# focaltune — every target builds its own virtual environment from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this kind of machine; elsewhere pip picks the build for the host.
TORCH  ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),torch==2.13.0,torch>=2.4)

.PHONY: install search test lint format bench soak db-up db-down clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest -q

search: install
	$(BIN)/focaltune train configs/demo.yaml --out runs/demo-train

clean:
	rm -rf $(VENV) runs .pytest_cache

db-up: install
	$(BIN)/python -m storage.postgres up

db-down: install
	$(BIN)/python -m storage.postgres down
