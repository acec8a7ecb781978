"""``experiments/zipf_toy.py --smoke`` runs end to end and shows top-k's bias against RS's unbiased estimate."""

from __future__ import annotations

import json
from pathlib import Path

from tests.experiments.scripts import run_script

METHODS = ("topk", "naive_fix", "naive_fix_expected", "rs_multinomial", "rs_systematic")
METRICS = ("tv", "kl", "missing_mass", "top1_ratio", "unique_per_round", "tv_single_round", "first_50")


def test_zipf_toy_smoke(tmp_path: Path) -> None:
    summary = run_script("experiments/zipf_toy.py", "--smoke", "--out", str(tmp_path), timeout=240)
    assert summary["experiment"] == "zipf_toy"
    assert summary["smoke"] is True
    assert (tmp_path / "zipf_toy.png").stat().st_size > 0

    result = json.loads((tmp_path / "zipf_toy.json").read_text())
    for key in ("config", "methods", "cache", "top_k_mass", "seconds"):
        assert key in result, key
    assert result["config"]["vocab_size"] == 100_000
    assert set(result["methods"]) == set(METHODS)
    for method in METHODS:
        m = result["methods"][method]
        for metric in METRICS:
            assert metric in m, (method, metric)
        assert len(m["first_50"]) == 50
        assert 0.0 <= m["tv"] <= 1.0, method
    # the cached path: random-sampling counts survive the record round trip exactly
    for rs in ("rs_multinomial", "rs_systematic"):
        assert result["cache"][rs]["max_abs_prob_error"] == 0.0

    methods = result["methods"]
    topk = methods["topk"]
    # top-k renormalised scales its ids up by 1 / (top-k mass); RS stays unbiased
    assert abs(topk["top1_ratio"] - 1.0 / result["top_k_mass"]) < 1e-3
    assert topk["unique_per_round"] == 20.0
    for rs in ("rs_multinomial", "rs_systematic"):
        assert methods[rs]["tv"] < topk["tv"], (rs, methods[rs]["tv"], topk["tv"])
        assert abs(methods[rs]["top1_ratio"] - 1.0) < 0.15, (rs, methods[rs]["top1_ratio"])
        assert 15.0 < methods[rs]["unique_per_round"] <= 22.0, rs
