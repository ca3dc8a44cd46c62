# focaltune — every target builds its own virtual environment from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch lies on this kind of machine; elsewhere pip picks the build for the host.
TORCH  ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),torch==2.13.0,torch>=2.4)

.PHONY: install system-deps backbone demo-config search test test-fast lint format bench quality soak scale gpu-check db-up db-down clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,test,bench]"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# What pip cannot install: PostgreSQL's binaries and headless chromium (apt, as root;
# otherwise one line says what to install). No test skips for want of them.
system-deps:
	@bash tools/system-deps.sh

# Three test processes: much of the suite waits on worker subprocesses, grace periods and
# servers, so they overlap well on 2 cores; each process keeps torch to one thread. The GPU
# tests (marker gpu) are deselected, not skipped: `make gpu-check` runs them on a GPU machine.
test: system-deps install lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 3 -m "not gpu"

# The fast tier, chosen by marker: unit and in-process tests only (no PostgreSQL, browser,
# CLI subprocesses, workers, dashboard server or training runs; no system parts needed).
FAST := not slow and not postgres and not browser and not process and not soak and not gpu

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 -m "$(FAST)"

# The demo study: nsmc4 reviews, an offline backbone built from them, 2 local workers.
NSMC4 ?= ../shared/data/nsmc4
DEMO  := nsmc4-demo
DB    := sqlite:///runs/focaltune.db

BACKBONE_CACHE ?= $(HOME)/.cache/focaltune/backbones

# The standard backbone (README, Backbone recipe), built once per settings and data into
# $(BACKBONE_CACHE) (~3 min on 2 cores); runs/backbone links to it.
backbone: runs/backbone/config.json

runs/backbone/config.json: | install
	@test -f $(NSMC4)/train.csv.gz || { echo "no data at $(NSMC4); set NSMC4=folder with train.csv.gz"; exit 2; }
	$(BIN)/focaltune backbone build --preset standard --train $(NSMC4)/train.csv.gz \
		--cache $(BACKBONE_CACHE) --out runs/backbone

# configs/demo.yaml names the default data folder; the demo runs a copy that names $(NSMC4).
RUNS ?= runs
demo-config:
	@mkdir -p $(RUNS)
	sed 's#\.\./shared/data/nsmc4#$(NSMC4)#g' configs/demo.yaml > $(RUNS)/demo.yaml

search: install runs/backbone/config.json demo-config
	$(BIN)/focaltune launch $(RUNS)/demo.yaml --workers 2
	$(BIN)/focaltune export --storage $(DB) --study $(DEMO) --out runs/final.yaml
	@echo "exported config: runs/final.yaml"

# Benchmark (not a test): focaltune against the searches users would pick instead, overheads. ~25 min.
bench: install
	$(BIN)/python benchmarks/bench.py --out runs/bench.json

# Does it learn, and does each stage pay (issue 11, not a test): baselines vs train vs
# search -> export -> final (full data, 200,000 rows) -> predict, on test.csv.gz.
quality: install runs/backbone/config.json
	$(BIN)/python benchmarks/quality.py --out runs/quality --nsmc4 $(NSMC4)

# GPU readiness (not a test run; needs an NVIDIA GPU; its step limits end within 8 min): the GPU
# tests (bf16 + TF32, a real CUDA OOM), bench's GPU part (MFU), `launch` with 2 workers on
# GPUs. Figures and logs go to $OUT, else runs/gpu-check/; no CUDA device: exit 2.
gpu-check: install
	NSMC4=$(NSMC4) VENV=$(VENV) bash tools/gpu-check.sh

# Fault soak (not in `make test`, run by CI): 4 workers, random kill -9, PostgreSQL.
soak: install
	$(BIN)/python benchmarks/soak.py

# Many workers (not a test): 8/32/128 synthetic workers, direct, PgBouncer and gRPC proxy.
scale: system-deps install
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf $(VENV) runs .pytest_cache

db-up: install
	$(BIN)/python -m tools.postgres up

db-down: install
	$(BIN)/python -m tools.postgres down
