"""Appendix K / Figure 2a of "Sparse Logit Sampling": sparse targets of a Zipf distribution.

The true distribution is Zipf over ``V = 100000`` ids, ``p_i ∝ 1 / i^s`` with ``s = 1`` (the
paper's pseudo-code: ``data_dist = 1 / idx``). Each method gives an estimate of ``p``:

* ``topk``: the 20 most probable ids, renormalised to sum to 1 (what top-k KD trains towards);
* ``naive_fix``: the 20 top ids at their true probabilities plus the residual mass on a "label"
  drawn from ``p``, averaged over ``rounds`` label draws (``naive_fix_expected`` is the exact
  expectation ``top-k + residual · p``, which is what the paper's pseudo-code plots);
* ``rs_multinomial`` / ``rs_systematic``: ``logitcache.targets.sampling.sample_random`` with 22 draws per
  round on the log-probabilities as logits, 1000 rounds; the estimate is the mean of the rounds'
  normalised targets (``count / 22``).

Every cached target goes through the record format: all rounds of a method are packed into one
record (one position per round) with ``records.encode``, decoded again, and the estimates are
computed from the decoded record. For the random methods the round trip must be lossless (asserted);
top-k probabilities pass the ratio quantiser and its largest error is reported.

Metrics per method: total variation ``½ Σ |p − q|``; ``KL(p ‖ q) = Σ_{p_i > 0} p_i log(p_i / max(q_i, ε))``
with ``ε = 1e-12`` (the estimates are zero on most of the support; ``missing_mass`` is the part
of ``p`` that falls there); the mean TV of a single round's target; unique ids per round; and
``q_1 / p_1``, the up-scaling of the most probable id.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from common import parser, save_figure, save_json
from torch import Tensor

from logitcache.core import records
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.sparse import SparseTargets

NAME = "zipf_toy"
EPS = 1e-12  # KL(p ‖ q) clamps the estimate here where it is zero


def zipf(vocab: int, s: float) -> Tensor:
    """``p_i ∝ 1 / i^s`` for ``i = 1..V``, float64."""
    p = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-s)
    return p / p.sum()


def round_trip(targets: SparseTargets, input_ids: Tensor) -> tuple[SparseTargets, int, float]:
    """Pack ``targets`` into one record and decode it: ``(decoded targets, record bytes, max prob error)``."""
    blob = records.encode(input_ids, targets)
    record = records.decode(blob)
    assert np.array_equal(record.input_ids, input_ids.numpy()), "input ids changed in the record round trip"
    decoded = SparseTargets.from_record(record)
    assert torch.equal(decoded.token_ids, targets.token_ids), "token ids changed in the record round trip"
    assert torch.equal(decoded.offsets, targets.offsets), "offsets changed in the record round trip"
    error = float((decoded.target_probs() - targets.target_probs()).abs().max())
    if targets.kind == "sampled":  # counts are stored exactly: the cached path loses nothing
        assert torch.equal(decoded.values, targets.values), "sampled counts changed in the record round trip"
        assert error == 0.0, f"sampled target probabilities changed in the record round trip (max error {error})"
    return decoded, len(blob), error


def mean_estimate(targets: SparseTargets, vocab: int, *, normalize_rows: bool) -> Tensor:
    """The mean over positions (rounds) of each position's target, as a dense ``[V]`` float64."""
    probs = targets.target_probs().double()
    if normalize_rows:
        totals = torch.zeros(targets.num_positions, dtype=torch.float64).index_add_(0, targets.position_index(), probs)
        probs = probs / totals[targets.position_index()]
    estimate = torch.zeros(vocab, dtype=torch.float64).index_add_(0, targets.token_ids, probs)
    return estimate / targets.num_positions


def single_round_tv(p: Tensor, targets: SparseTargets, extra_ids: Tensor | None = None) -> float:
    """Mean over positions of TV(p, that position's target), from the sparse entries alone.

    TV = ½ (Σ_{i ∈ S} |q_i − p_i| + Σ_{i ∉ S} p_i) for a target supported on S.
    """
    probs = targets.target_probs().double()
    rows = targets.position_index()
    ids = targets.token_ids
    if extra_ids is not None:  # naive fix: the residual goes to a label, merged or appended
        totals = torch.zeros(targets.num_positions, dtype=torch.float64).index_add_(0, rows, probs)
        residual = (1.0 - totals).clamp_min(0.0)
        rows = torch.cat([rows, torch.arange(targets.num_positions)])
        ids = torch.cat([ids, extra_ids])
        probs = torch.cat([probs, residual])
        # merge an appended label that is already an entry of its row
        key = rows * p.numel() + ids
        key, inverse = torch.unique(key, return_inverse=True)
        probs = torch.zeros(key.numel(), dtype=torch.float64).index_add_(0, inverse, probs)
        rows, ids = key // p.numel(), key % p.numel()
    gap = (probs - p[ids]).abs()
    per_row = torch.zeros(targets.num_positions, dtype=torch.float64).index_add_(0, rows, gap - p[ids])
    return float(0.5 * (per_row + 1.0).mean())


def distances(p: Tensor, q: Tensor) -> dict[str, float]:
    support = p > 0
    kl = (p[support] * (p[support].log() - q[support].clamp_min(EPS).log())).sum()
    return {
        "tv": float(0.5 * (p - q).abs().sum()),
        "kl": float(kl),
        "missing_mass": float(p[q <= 0].sum()),
        "top1_ratio": float(q[0] / p[0]),
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    started = time.perf_counter()
    vocab, s, k, draws = 100_000, 1.0, 20, 22
    rounds = 200 if args.smoke else 1000
    y_max = 50
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    p = zipf(vocab, s)
    logits = p.log().float()[None]  # [1, V]: log-probabilities as logits
    labels = torch.multinomial(p, rounds, replacement=True, generator=gen)  # naive fix: one label per round
    estimates: dict[str, Tensor] = {}
    unique: dict[str, float] = {}
    single_tv: dict[str, float] = {}
    cache: dict[str, dict[str, float]] = {}

    # top-k: one position, k entries (sorted), stored with the default ratio quantiser
    topk, topk_bytes, topk_error = round_trip(sample_topk(logits, k), torch.zeros(1, dtype=torch.int64))
    cache["topk"] = {"record_bytes": topk_bytes, "max_abs_prob_error": topk_error}
    estimates["topk"] = mean_estimate(topk, vocab, normalize_rows=True)
    unique["topk"] = float(k)
    single_tv["topk"] = float(0.5 * (estimates["topk"] - p).abs().sum())

    # naive fix: the same top-k entries at their cached probabilities, residual on each round's label
    kept = topk.target_probs().double()
    residual = 1.0 - float(kept.sum())
    fixed = torch.zeros(vocab, dtype=torch.float64)
    fixed[topk.token_ids] = kept
    estimates["naive_fix"] = fixed + residual * torch.bincount(labels, minlength=vocab).double() / rounds
    estimates["naive_fix_expected"] = fixed + residual * p
    in_topk = torch.isin(labels, topk.token_ids)
    unique["naive_fix"] = k + float((~in_topk).double().mean())
    unique["naive_fix_expected"] = float("nan")  # not a per-round target
    repeated = SparseTargets(
        kind="topk",
        vocab_size=vocab,
        token_ids=topk.token_ids.repeat(rounds),
        values=topk.values.repeat(rounds),
        offsets=torch.arange(rounds + 1, dtype=torch.int64) * k,
        k=k,
    )
    single_tv["naive_fix"] = single_round_tv(p, repeated, extra_ids=labels)
    single_tv["naive_fix_expected"] = float("nan")

    # random sampling: one position per round, all rounds in one record
    for method in ("multinomial", "systematic"):
        name = f"rs_{method}"
        sampled = sample_random(logits.expand(rounds, vocab), draws, method=method, generator=gen)
        decoded, nbytes, error = round_trip(sampled, labels)
        cache[name] = {"record_bytes": nbytes, "max_abs_prob_error": error}
        estimates[name] = mean_estimate(decoded, vocab, normalize_rows=False)
        unique[name] = float(decoded.entry_counts().double().mean())
        single_tv[name] = single_round_tv(p, decoded)

    methods: dict[str, dict[str, Any]] = {}
    for name, q in estimates.items():
        total = float(q.sum())
        assert abs(total - 1.0) < 1e-5, f"{name}: the estimate sums to {total}"
        m: dict[str, Any] = distances(p, q)
        m["unique_per_round"] = None if math.isnan(unique[name]) else round(unique[name], 3)
        m["tv_single_round"] = None if math.isnan(single_tv[name]) else single_tv[name]
        m["first_50"] = [float(x) for x in q[:y_max]]
        methods[name] = m

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    idx = np.arange(1, y_max + 1)
    styles = {
        "topk": ("Top-K (k=20, renormalised)", "tab:blue"),
        "naive_fix": (f"Naive fix (mean of {rounds} labels)", "darkgoldenrod"),
        "rs_multinomial": (f"Random sampling, multinomial ({draws} × {rounds})", "salmon"),
        "rs_systematic": (f"Random sampling, systematic ({draws} × {rounds})", "tab:green"),
    }
    for ax, log in zip(axes, (False, True), strict=True):
        ax.plot(idx, p[:y_max].numpy(), label="Ground truth (Zipf, s=1)", color="purple", lw=2.5, marker="o", ms=3)
        for name, (label, color) in styles.items():
            ax.plot(idx, estimates[name][:y_max].numpy(), label=label, color=color, lw=1.5, marker="o", ms=2.5)
        expected = estimates["naive_fix_expected"][:y_max].numpy()
        ax.plot(idx, expected, label="Naive fix (expectation)", color="darkgoldenrod", lw=1.2, ls="--")
        ax.set_xlabel("token index")
        ax.set_ylabel("target probability")
        ax.grid(alpha=0.4)
        if log:
            ax.set_yscale("log")
            ax.set_title("log scale")
        else:
            ax.set_ylim(-0.002, 0.15)
            ax.set_title("as the paper's Figure 2a (y cut at 0.15)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Zipf over V={vocab}: sparse targets vs the truth (first {y_max} ids)")
    save_figure(args.out, NAME, figure)
    plt.close(figure)

    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "experiment": NAME,
        "smoke": args.smoke,
        "seed": args.seed,
        "config": {
            "vocab_size": vocab,
            "zipf_s": s,
            "top_k": k,
            "samples_per_round": draws,
            "rounds": rounds,
            "kl_epsilon": EPS,
            "note": "p_i ∝ 1/i^s with s = 1 as in the paper's pseudo-code; KL(p‖q) over the support of p "
            "with q clamped at kl_epsilon, so it mostly measures the mass q misses",
        },
        "top_k_mass": float(p[:k].sum()),
        "methods": methods,
        "cache": cache,
        "seconds": round(elapsed, 2),
    }
    save_json(args.out, NAME, result)
    summary = {
        "experiment": NAME,
        "smoke": args.smoke,
        "seconds": round(elapsed, 2),
        **{
            name: {
                "tv": round(m["tv"], 4),
                "kl": round(m["kl"], 3),
                "top1_ratio": round(m["top1_ratio"], 3),
                "unique": m["unique_per_round"],
            }
            for name, m in methods.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
