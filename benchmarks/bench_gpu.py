"""Benchmark: the GPU figures, in one run (``make gpu-check`` calls it after the CUDA tests).

* **sampling vs one softmax**: ``sample()`` (multinomial, systematic, top-k; N = 50) of
  ``[P, V]`` bf16 teacher logits against ``torch.softmax`` of the same logits in fp32, the least
  any use of the teacher's distribution costs; interleaved, best of ``--repeats``;
* **decode on the device**: ``decode_torch(record, "cuda")`` against the host decoder
  (``records.decode`` + ``SparseTargets.from_record`` + ``.to("cuda")``), positions/s, over
  records of T = 2048, V = 128256, N = 50;
* **the loss** and **the loader into CUDA tensors**: ``bench_kd_loss.py`` and ``bench_loader.py``
  (smaller sizes), run as they are; their JSON objects are nested under ``kd_loss`` / ``loader``.

``--tests-summary`` / ``--tests-rc`` carry pytest's result into the JSON. The last line printed
is one JSON object. Run on a CUDA machine: ``python benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.targets.sampling import sample, sample_random
from logitcache.targets.sparse import SparseTargets, decode_torch
from logitcache.targets.synthetic import lm_like_logits

HERE = Path(__file__).resolve().parent


def _timed(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def _interleaved(repeats: int, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Best time of each, the functions taking turns (the same machine state for all)."""
    for fn in fns.values():  # warm-up: kernels compiled, allocator primed
        _timed(fn)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], _timed(fn))
    return best


def sampling_vs_softmax(positions: int, vocab: int, repeats: int) -> dict[str, Any]:
    logits = lm_like_logits(positions, vocab, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    logits = logits.cuda()
    gen = torch.Generator("cuda").manual_seed(0)
    fns: dict[str, Callable[[], Any]] = {
        "softmax": lambda: torch.softmax(logits.float(), dim=-1),
        "multinomial": lambda: sample(logits, SamplerConfig(rounds=50), gen),
        "systematic": lambda: sample(logits, SamplerConfig(method="systematic", rounds=50), gen),
        "topk": lambda: sample(logits, SamplerConfig(method="topk", k=12), gen),
    }
    best = _interleaved(repeats, fns)
    out: dict[str, Any] = {"positions": positions, "vocab": vocab, "ms_softmax": round(best["softmax"] * 1e3, 3)}
    for name in ("multinomial", "systematic", "topk"):
        out[f"ms_{name}"] = round(best[name] * 1e3, 3)
        out[f"ratio_{name}_vs_softmax"] = round(best[name] / best["softmax"], 3)
    return out


def decode_on_device(count: int, seq_len: int, vocab: int, repeats: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    pool = [sample_random(lm_like_logits(seq_len, vocab, generator=gen), 50, generator=gen) for _ in range(4)]
    blobs = [
        records.encode(torch.randint(0, vocab, (seq_len,), generator=gen), pool[i % len(pool)]) for i in range(count)
    ]

    def device() -> None:
        for data in blobs:
            decode_torch(data, "cuda")

    def host() -> None:
        for data in blobs:
            record = records.decode(data)
            SparseTargets.from_record(record).to("cuda")

    best = _interleaved(repeats, {"device": device, "host": host})
    positions = count * seq_len
    return {
        "records": count,
        "seq_len": seq_len,
        "vocab": vocab,
        "device_decode_positions_per_s": round(positions / best["device"]),
        "host_decode_positions_per_s": round(positions / best["host"]),
        "ratio_device_vs_host": round(best["host"] / best["device"], 3),
    }


def _script(name: str, *args: str, timeout: float = 100) -> dict[str, Any]:
    """Another benchmark's last JSON line, or what went wrong (the other figures still come out)."""
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / name), *args], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{name}: over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"{name}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"{name}: no JSON line in its output"}
    return result


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # one part failing must not hide the others' figures
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tests-summary", default="", help="pytest's last line, carried into the JSON")
    parser.add_argument("--tests-rc", type=int, default=None, help="pytest's exit status")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device (torch.cuda.is_available() is False)")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tests": {"rc": args.tests_rc, "summary": args.tests_summary},
        "sampling": _guarded(lambda: sampling_vs_softmax(8192, 128256, args.repeats)),
        "decode": _guarded(lambda: decode_on_device(32, 2048, 128256, args.repeats)),
        "kd_loss": _script("bench_kd_loss.py"),
        "loader": _script("bench_loader.py", "--records", "256", "--repeats", "2"),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
