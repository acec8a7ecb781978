#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the CUDA tests (the KD suite on the GPU, the tests marked
# `cuda`) and then the GPU benchmarks (benchmarks/bench_gpu.py), in about 5 minutes; the last line
# printed is one JSON object (also written, with the pytest log, to $OUT or /tmp). It uses the
# machine's own python3 with its CUDA build of torch and Triton, and installs what else the tests
# need beside them (the image is assumed to hold torch, Triton, transformers, numpy, pytest and
# hypothesis):
#   scripts/gpu_check.sh                          from ./.whl if that folder exists, else from PyPI
#   scripts/gpu_check.sh --download-wheels [DIR]  where PyPI is reachable: fetch those packages (the
#                                                 dependency closure, at the versions this checkout's
#                                                 .venv holds) as CPython 3.12 manylinux wheels into
#                                                 DIR (.whl), for a GPU machine without network
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp}

if [ "${1:-}" = "--download-wheels" ]; then
  dir=${2:-.whl}
  mkdir -p "$dir"
  pins=$(.venv/bin/python - <<'PY'
import importlib.metadata as md
import re

from packaging.requirements import Requirement

# on a CUDA image already (its own builds; replacing them would break it), or not needed there
IMAGE = {"torch", "triton", "numpy", "scipy", "transformers", "tokenizers", "huggingface-hub", "safetensors",
         "pyyaml", "tqdm", "regex", "requests", "filelock", "fsspec", "packaging", "jinja2", "markupsafe",
         "sympy", "networkx", "mpmath", "setuptools", "certifi", "urllib3", "charset-normalizer", "pytest",
         "pluggy", "iniconfig", "hypothesis", "sortedcontainers", "attrs", "hf-xet", "typer", "rich",
         "shellingham", "pygments", "markdown-it-py", "mdurl"}
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
todo, pins = ["logitcache", "pytest-timeout", "gguf"], {}
while todo:
    name = norm(todo.pop())
    if name in pins or name in IMAGE or name.startswith("nvidia-"):
        continue
    dist = md.distribution(name)
    pins[name] = dist.version
    todo += [r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})]
pins.pop("logitcache")
print(" ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
PY
)
  # shellcheck disable=SC2086  # one word per pin
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dir" $pins
  echo "$pins" | tr ' ' '\n' > "$dir/PINS.txt"
  du -sh "$dir"
  exit 0
fi

"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_check: $PY has no torch (set PYTHON=...)" >&2; exit 2; }
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch")'
if [ -d .whl ]; then  # offline: the wheels beside the checkout, on PYTHONPATH with the sources
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}"
else  # in the machine's environment; torch and Triton already satisfy the pins, so pip keeps its CUDA builds
  "$PY" -m pip install -q -e '.[gguf,triton]' pytest pytest-timeout hypothesis
fi
export PYTHONUNBUFFERED=1

set +e
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/kd tests/training/test_cuda_loader.py \
  tests/writer/test_cuda_writer.py tests/core/test_records.py::test_torch_decode_on_cuda_matches_cpu \
  tests/targets/test_sampling.py::test_sampling_on_cuda 2>&1 | tee "$LOGS/gpu_check_pytest.log"
rc=${PIPESTATUS[0]}
summary=$(grep -E "passed|failed|error|skipped|no tests ran" "$LOGS/gpu_check_pytest.log" | tail -1)
timeout 240 "$PY" benchmarks/bench_gpu.py --tests-rc "$rc" --tests-summary "$summary" | tee "$LOGS/gpu_check.json"
exit "$rc"
