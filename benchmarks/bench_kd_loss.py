"""Benchmark: sparse-KD loss forward + backward against cross-entropy, in time and peak memory.

Variants, all on the same random logits and targets (``N`` positions, vocabulary ``V``, ``K``
target entries per position):

* ``ce`` — ``torch.nn.functional.cross_entropy`` (the baseline);
* ``dense_kd`` — the paper's pseudo-code: scatter the targets into a dense ``[N, V]`` tensor,
  ``kl_div`` on ``log_softmax``;
* ``sparse_kd`` — :func:`logitcache.kd.sparse_kd_loss` with the device default (chunked on the
  CPU, Triton on CUDA); on CUDA also ``sparse_kd_chunked``;
* ``fused_linear`` vs ``linear_plus_ce`` — from hidden states ``[N, H]`` and an LM head ``[V, H]``;
  on CUDA, where they are installed, two peers of the fused form: Liger-Kernel's
  ``LigerFusedLinearJSD`` (online distillation: the teacher's hidden states and head as well, the
  cost an offline cache removes) and Cut Cross-Entropy's ``linear_cross_entropy`` (CE only).

On CUDA the tensors are bf16 (``--dtype``), as a training step would have them; on the CPU fp32.

Peak memory is measured honestly on the CPU: each variant runs in its own subprocess, which
reports its peak resident set size (``ru_maxrss``) above the RSS it had once its inputs existed.
On CUDA, ``torch.cuda.max_memory_allocated`` above the inputs. Times are the best of a few
forward + backward runs after a warm-up.

Run: ``python benchmarks/bench_kd_loss.py [--n 4096 --vocab 32768 --k 16 --hidden 256]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from logitcache.kd import KDParams, fused_linear_sparse_kd_loss, sparse_kd_loss

LOGIT_VARIANTS = ("ce", "dense_kd", "sparse_kd", "sparse_kd_chunked")
LINEAR_VARIANTS = ("fused_linear", "linear_plus_ce")
PEER_VARIANTS = {  # CUDA only, where the package imports
    "liger_fused_linear_jsd": "liger_kernel.transformers",
    "cce_linear_ce": "cut_cross_entropy",
}


def _targets(n: int, vocab: int, k: int, device: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    base = torch.randint(0, vocab, (n, 1), generator=gen)
    ids = ((base + torch.arange(k) * 2039) % vocab).to(device)  # unique within a row
    probs = torch.softmax(torch.randn(n, k, generator=gen) * 2, dim=-1).to(device)
    labels = torch.randint(0, vocab, (n,), generator=gen).to(device)
    return ids, probs, labels


def _step(
    variant: str, args: argparse.Namespace, device: torch.device
) -> tuple[Callable[[], None], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    ids, probs, labels = _targets(args.n, args.vocab, args.k, device, gen)
    if variant in LINEAR_VARIANTS or variant in PEER_VARIANTS:
        hidden = torch.randn(args.n, args.hidden, generator=gen).to(device, dtype).requires_grad_()
        weight = torch.randn(args.vocab, args.hidden, generator=gen).to(device, dtype)
        weight.mul_(args.hidden**-0.5).requires_grad_()  # in place: no temporary inflates the peak
        peer = _peer(variant, args, device, dtype, gen) if variant in PEER_VARIANTS else None

        def linear_step() -> None:
            hidden.grad = weight.grad = None
            if peer is not None:
                loss = peer(hidden, weight, labels)
            elif variant == "fused_linear":
                loss = fused_linear_sparse_kd_loss(hidden, weight, ids, probs)
            else:
                loss = F.cross_entropy(hidden @ weight.T, labels)
            loss.backward()

        return linear_step, [hidden, weight, ids, probs, labels]
    logits = torch.randn(args.n, args.vocab, generator=gen).to(device, dtype)
    logits.mul_(2.0).requires_grad_()  # in place: no temporary inflates the peak

    def logit_step() -> None:
        logits.grad = None
        if variant == "ce":
            loss = F.cross_entropy(logits, labels)
        elif variant == "dense_kd":
            target = torch.zeros(args.n, args.vocab, device=device).scatter_(1, ids, probs)
            loss = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")
        else:
            params = KDParams(impl="chunked" if variant == "sparse_kd_chunked" else "auto")
            loss = sparse_kd_loss(logits, ids, probs, params=params)
        loss.backward()

    return logit_step, [logits, ids, probs, labels]


def _peer(
    variant: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, gen: torch.Generator
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The peer's loss from (student hidden, student head, labels)."""
    if variant == "liger_fused_linear_jsd":
        from liger_kernel.transformers import LigerFusedLinearJSD

        teacher_hidden = torch.randn(args.n, args.hidden, generator=gen).to(device, dtype)
        teacher_weight = torch.randn(args.vocab, args.hidden, generator=gen).to(device, dtype)
        teacher_weight.mul_(args.hidden**-0.5)
        jsd = LigerFusedLinearJSD()
        return lambda h, w, labels: jsd(h, w, teacher_hidden, teacher_weight)
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, labels: linear_cross_entropy(h, w, labels)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module.split(".")[0]) is not None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Time and measure one variant in this process."""
    device = torch.device(args.device)
    step, _inputs = _step(variant, args, device)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss()
        if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > base + 64 * 2**20:
            raise RuntimeError("setup left a high-water mark above the current RSS: the peak would be understated")
    step()  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"ms": best * 1000, "peak_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--n", type=int, default=16384 if cuda else 4096, help="positions N")
    parser.add_argument("--vocab", type=int, default=128256 if cuda else 32768, help="vocabulary V")
    parser.add_argument("--k", type=int, default=16, help="target entries per position K")
    parser.add_argument("--hidden", type=int, default=2048 if cuda else 256, help="hidden size H (fused linear)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32", help="logits / hidden / head dtype")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    variants = [v for v in LOGIT_VARIANTS if args.device == "cuda" or v != "sparse_kd_chunked"] + list(LINEAR_VARIANTS)
    skipped: dict[str, str] = {}
    if args.device == "cuda":
        for variant, module in PEER_VARIANTS.items():
            if _installed(module):
                variants.append(variant)
            else:
                skipped[variant] = f"{module.split('.')[0]} is not installed"
    results: dict[str, dict[str, float]] = {}
    for variant in variants:
        if args.device == "cuda" and variant not in PEER_VARIANTS:
            results[variant] = run_variant(variant, args)
            torch.cuda.empty_cache()
            continue
        # the CPU's peak RSS is per process; a peer's CUDA error must not poison this process
        cmd = [sys.executable, __file__, "--variant", variant]
        for name in ("n", "vocab", "k", "hidden", "repeats", "device", "dtype"):
            cmd += [f"--{name}", str(getattr(args, name))]
        done = subprocess.run(cmd, capture_output=True, text=True, check=variant not in PEER_VARIANTS)
        if done.returncode != 0:  # a peer that installed but does not run here: say so, keep the rest
            skipped[variant] = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            continue
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, results[variant], file=sys.stderr)
    ce, sparse, dense = results["ce"], results["sparse_kd"], results["dense_kd"]
    fused, unfused = results["fused_linear"], results["linear_plus_ce"]
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "n": args.n,
        "vocab": args.vocab,
        "k": args.k,
        "hidden": args.hidden,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "ms_ce": round(ce["ms"], 2),
        "ms_sparse_kd": round(sparse["ms"], 2),
        "ms_dense_kd": round(dense["ms"], 2),
        "peak_mb_ce": round(ce["peak_mb"], 1),
        "peak_mb_sparse_kd": round(sparse["peak_mb"], 1),
        "peak_mb_dense_kd": round(dense["peak_mb"], 1),
        "ratio_time_sparse_vs_ce": round(sparse["ms"] / ce["ms"], 3),
        "ratio_mem_sparse_vs_ce": round(sparse["peak_mb"] / ce["peak_mb"], 3),
        "ms_fused_linear": round(fused["ms"], 2),
        "ms_linear_plus_ce": round(unfused["ms"], 2),
        "peak_mb_fused_linear": round(fused["peak_mb"], 1),
        "peak_mb_linear_plus_ce": round(unfused["peak_mb"], 1),
        "ratio_mem_fused_vs_linear_ce": round(fused["peak_mb"] / unfused["peak_mb"], 3),
    }
    if "sparse_kd_chunked" in results:
        summary["ms_sparse_kd_chunked"] = round(results["sparse_kd_chunked"]["ms"], 2)
        summary["peak_mb_sparse_kd_chunked"] = round(results["sparse_kd_chunked"]["peak_mb"], 1)
    for variant in PEER_VARIANTS:
        if variant in results:
            summary[f"ms_{variant}"] = round(results[variant]["ms"], 2)
            summary[f"peak_mb_{variant}"] = round(results[variant]["peak_mb"], 1)
    if skipped:
        summary["skipped"] = skipped
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
