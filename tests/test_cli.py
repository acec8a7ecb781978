"""The `logitcache` command, run through its real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from logitcache.cli import main


def test_demo_prints_a_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--vocab-size", "5000", "--seq-len", "32", "--sequences", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["positions"] == 64
    assert summary["entries_per_position"] >= 1
    assert summary["bytes_per_position_total"] > 0


@pytest.mark.parametrize("method", ["systematic", "topk"])
def test_demo_other_samplers(method: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--vocab-size", "3000", "--seq-len", "16", "--sequences", "1", "--method", method]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == method


def test_bad_arguments_exit_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "logitcache", "demo", "--rounds", "0"], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "rounds: expected 1 <= rounds <= 65535, got 0" in done.stderr
