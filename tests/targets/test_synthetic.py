"""The synthetic LM-like teacher: shaped as the benchmark and demo claim."""

from __future__ import annotations

import torch

from logitcache.targets.sampling import sample_random
from logitcache.targets.synthetic import lm_like_logits, zipf_unigram


def test_fifty_rounds_give_about_twelve_unique_tokens_at_llama3_vocab() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = lm_like_logits(64, 128256, generator=gen)
    targets = sample_random(logits, 50, generator=gen)
    unique = targets.num_entries / targets.num_positions
    assert 10.0 < unique < 15.0


def test_zipf_unigram_is_a_distribution_and_permutable() -> None:
    p = zipf_unigram(1000)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert (p[1:] <= p[:-1]).all()
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    q = zipf_unigram(1000, permutation=perm)
    torch.testing.assert_close(q[perm], p)


def test_dtype_and_shape() -> None:
    x = lm_like_logits(3, 100, generator=torch.Generator().manual_seed(2), dtype=torch.bfloat16)
    assert x.shape == (3, 100)
    assert x.dtype == torch.bfloat16
