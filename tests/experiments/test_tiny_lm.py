"""``experiments/tiny_lm.py --smoke``: the whole pipeline (teacher CLI → server → loader → students) runs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.experiments.scripts import run_script


def test_tiny_lm_smoke(tmp_path: Path) -> None:
    summary = run_script("experiments/tiny_lm.py", "--smoke", "--out", str(tmp_path), timeout=600)
    result = json.loads((tmp_path / "tiny_lm.json").read_text())
    methods = result["methods"]
    assert set(methods) == {
        "ce",
        "topk12",
        "topk12_ghost",
        "naive_fix",
        "rs_multinomial",
        "rs_systematic",
        "full_kd_online",
    }
    for name, row in methods.items():
        assert row["lm_loss"] > 0, name
        assert 0 <= row["ece"] <= 1, name
    assert methods["full_kd_online"]["gap_closed_pct"] == 100.0
    assert result["cache"]["rs_multinomial"]["written"] == result["cached_sequences"]  # through the real CLI
    assert result["entries_per_position"]["topk12"] == 12
    assert (tmp_path / "tiny_lm_curves.png").stat().st_size > 0
    assert summary.keys() == methods.keys()
