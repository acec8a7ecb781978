"""A bounded coverage-guided fuzz run of the record decoder, seeded with valid records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logitcache.core import records
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.synthetic import lm_like_logits

pytest.importorskip("atheris")

SECONDS = 20


def test_fuzzing_the_decoder_finds_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i, (vocab, t) in enumerate([(300, 8), (3000, 16), (128256, 4)]):
        logits = lm_like_logits(t, vocab, generator=gen)
        ids = torch.randint(0, vocab, (t,), generator=gen)
        (corpus / f"sampled{i}").write_bytes(records.encode(ids, sample_random(logits, 20, generator=gen)))
        (corpus / f"dense{i}").write_bytes(records.encode(ids, sample_random(logits, 20, generator=gen), dense=True))
        (corpus / f"topk{i}").write_bytes(records.encode(ids, sample_topk(logits, 5)))
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("fuzz_records.py")),
            str(corpus),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Done" in done.stderr  # libFuzzer's summary: the run completed without a finding
    assert not list(tmp_path.glob("crash-*"))
