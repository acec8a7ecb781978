"""``experiments/distillation.py --smoke``: the whole pipeline (teacher CLI → server → loader →
students) runs for every method, on the real teacher when its wheel is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.experiments.scripts import run_script

METHODS = {
    "ce",
    "topk12",
    "topk12_ghost",
    "naive_fix",
    "rs_multinomial",
    "rs_systematic",
    "rs_multinomial_n50",
    "rs_systematic_n50",
    "full_kd_online",
}


@pytest.mark.timeout(900)  # the subprocess's own limit (run_script) comes first
def test_distillation_smoke(tmp_path: Path) -> None:
    summary = run_script("experiments/distillation.py", "--smoke", "--out", str(tmp_path), timeout=800)
    result = json.loads((tmp_path / "distillation.json").read_text())
    methods = result["methods"]
    assert set(methods) == METHODS
    assert summary.keys() == methods.keys()
    for name, row in methods.items():
        assert row["lm_loss"] > 0, name
        assert 0 <= row["ece"] <= 1, name
        assert 0 <= row["top1_agreement"] <= 1, name
    assert methods["full_kd_online"]["gap_closed_pct"] == 100.0
    assert methods["ce"]["gap_closed_pct"] == 0.0
    for shard in ("rs_multinomial", "rs_systematic", "rs_multinomial_n50", "rs_systematic_n50", "topk12"):
        assert result["cache"][shard]["written"] == result["cached_sequences"], shard  # through the real CLI
    assert methods["topk12"]["unique_ids_per_position"] == 12
    assert methods["topk12_ghost"]["bytes_per_position"] == methods["topk12"]["bytes_per_position"]
    n12, n50 = (
        methods["rs_multinomial"]["unique_ids_per_position"],
        methods["rs_multinomial_n50"]["unique_ids_per_position"],
    )
    assert n12 < n50  # more rounds, more unique ids
    assert {"name", "vocab_size", "lm_loss", "ece"} <= result["teacher"].keys()
    assert result["corpus"]
    assert (tmp_path / "distillation_curves.png").stat().st_size > 0
