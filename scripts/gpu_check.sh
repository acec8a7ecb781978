#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the CUDA tests (the KD suite on the GPU, the tests marked
# `cuda`) and the GPU benchmarks (benchmarks/bench_gpu.py), in about 5 minutes; the last line
# printed is one JSON object. It uses the machine's own python3 with its CUDA build of torch and
# Triton, and installs the rest of what the tests need beside them:
#   scripts/gpu_check.sh                          from ./.whl if that folder exists, else from PyPI
#   scripts/gpu_check.sh --download-wheels [DIR]  on a machine with PyPI: fetch those packages (the
#                                                 versions this checkout's .venv holds) as CPython 3.12
#                                                 manylinux wheels into DIR (.whl), for an offline GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# what a CUDA image with torch, Triton, transformers, numpy, pytest and hypothesis may lack
NEEDS=(annotated-types fastapi grpcio grpcio-health-checking grpcio-reflection lmdb prometheus-client protobuf
  pydantic pydantic-core pydantic-settings pytest-timeout python-dotenv starlette typing-inspection uvicorn
  xxhash zstandard gguf)

if [ "${1:-}" = "--download-wheels" ]; then
  dir=${2:-.whl}
  mkdir -p "$dir"
  for name in "${NEEDS[@]}"; do
    pin=$(.venv/bin/pip freeze 2>/dev/null | grep -i -E "^${name//-/[-_]}==" || true)
    [ -n "$pin" ] || { echo "gpu_check: $name is not in .venv (make .venv/.installed first)" >&2; exit 2; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$dir" "$pin"
  done
  du -sh "$dir"
  exit 0
fi

"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_check: $PY has no torch (set PYTHON=...)" >&2; exit 2; }
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch")'
if [ -d .whl ]; then  # offline: the wheels beside the checkout, on PYTHONPATH with the sources
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}"
else  # torch and Triton already satisfy the pins: pip keeps the machine's CUDA builds
  "$PY" -m pip install -q -e '.[gguf,triton]' pytest pytest-timeout hypothesis
fi
export PYTHONUNBUFFERED=1

set +e
timeout 330 "$PY" -m pytest -q -p no:cacheprovider tests/kd tests/training/test_cuda_loader.py \
  tests/writer/test_cuda_writer.py tests/core/test_records.py tests/targets/test_sampling.py 2>&1 | tee /tmp/gpu_check_pytest.log
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E "(passed|failed|error)" /tmp/gpu_check_pytest.log | tail -1)
"$PY" benchmarks/bench_gpu.py --tests-rc "$rc" --tests-summary "$summary"
exit "$rc"
