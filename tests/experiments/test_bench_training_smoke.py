"""``benchmarks/bench_training.py --smoke`` runs end to end and prints its JSON summary (no speed assertions)."""

from __future__ import annotations

from tests.experiments.scripts import run_script

KEYS = (
    "tokens_per_s_ce",
    "tokens_per_s_rs_cached",
    "tokens_per_s_full_kd_online",
    "ratio_rs_vs_ce",
    "ratio_rs_vs_full_kd",
)


def test_bench_training_smoke() -> None:
    summary = run_script("benchmarks/bench_training.py", "--smoke", timeout=240)
    for key in KEYS:
        assert isinstance(summary[key], int | float), key
        assert summary[key] > 0, key
    assert len(summary["per_ratio"]) == 2
    assert all(r["widest_k"] >= 1 for r in summary["per_ratio"])
