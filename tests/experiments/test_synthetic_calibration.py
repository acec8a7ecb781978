"""``experiments/synthetic_calibration.py --smoke`` runs end to end through a real cache server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.experiments.scripts import run_script

MODELS = ("teacher", "ce", "full_kd", "topk", "rs_multinomial", "rs_systematic")
CACHED = ("topk", "rs_multinomial", "rs_systematic")


def test_synthetic_calibration_smoke(tmp_path: Path) -> None:
    summary = run_script("experiments/synthetic_calibration.py", "--smoke", "--out", str(tmp_path), timeout=240)
    assert summary["experiment"] == "synthetic_calibration"
    assert summary["smoke"] is True
    assert (tmp_path / "synthetic_calibration.png").stat().st_size > 0

    result = json.loads((tmp_path / "synthetic_calibration.json").read_text())
    for key in ("steps", "batch", "note", "config", "methods", "cache", "bayes_accuracy", "chance_accuracy"):
        assert key in result, key
    assert result["steps"] > 0
    assert result["batch"] > 0
    assert set(result["methods"]) == set(MODELS)
    chance = result["chance_accuracy"]
    assert chance == 1 / 1024
    for name in MODELS:
        r = result["methods"][name]
        for key in ("accuracy", "ece", "nll", "mean_confidence", "bins"):
            assert key in r, (name, key)
        assert len(r["bins"]["count"]) == result["config"]["n_bins"]
        assert 0.0 <= r["ece"] <= 1.0, name
        # every model learned something, even at smoke size
        assert r["accuracy"] > chance, (name, r["accuracy"])
    # every cached method went through the server: all records written, targets read back
    positions = result["config"]["train_chunks"] * result["config"]["chunk"]
    for name in CACHED:
        assert result["cache"][name]["positions"] == positions, name
        assert result["cache"][name]["entries_per_position"] >= 1.0, name
    assert result["cache"]["topk"]["entries_per_position"] == 7.0
