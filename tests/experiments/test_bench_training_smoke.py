"""``benchmarks/bench_training.py --smoke`` runs end to end and prints its JSON summary (no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = (
    "tokens_per_s_ce",
    "tokens_per_s_rs_cached",
    "tokens_per_s_full_kd_online",
    "ratio_rs_vs_ce",
    "ratio_rs_vs_full_kd",
)


def test_bench_training_smoke() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_training.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert isinstance(summary[key], int | float), key
        assert summary[key] > 0, key
    assert len(summary["per_ratio"]) == 2
    assert all(r["widest_k"] >= 1 for r in summary["per_ratio"])
