"""Synthetic, language-model-like teacher logits for demos, tests and benchmarks.

Real teacher distributions are sharp and Zipf-shaped: a few dozen tokens carry almost all the
mass, those tokens are drawn from a skewed unigram (frequent tokens recur across positions), and
the rest of the vocabulary shares a thin tail. :func:`lm_like_logits` imitates that: at each
position, ``support`` tokens drawn from a global Zipf unigram get logits ``-alpha·log(rank)``
plus Gaussian noise, and every other token gets ``floor`` plus unit Gaussian noise. With the
defaults and ``V = 128256``, 50 random-sampling rounds give about 12 unique tokens per position,
as the paper reports for real teachers (Appendix C).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lm_like_logits", "zipf_unigram"]


def zipf_unigram(vocab_size: int, exponent: float = 1.1, permutation: Tensor | None = None) -> Tensor:
    """Zipf probabilities over the vocabulary, ``[V]`` float32.

    Token ``i`` has rank ``i + 1`` (frequent tokens have small ids, as in BPE vocabularies whose ids
    follow merge order) unless ``permutation`` (``[V]``, a permutation of ids) reassigns ranks.
    """
    ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    probs = ranks.pow(-exponent)
    probs /= probs.sum()
    if permutation is not None:
        probs = probs[permutation.argsort()]
    return probs.float()


def lm_like_logits(
    num_positions: int,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    unigram: Tensor | None = None,  # [V] token frequencies; default zipf_unigram(vocab_size)
    support: int = 64,  # tokens per position that carry the mass
    alpha: float = 1.8,  # Zipf exponent of the probabilities within a position
    noise: float = 0.5,  # std of the Gaussian noise on the support logits
    floor: float = -15.0,  # mean logit of the tail
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """LM-like teacher logits ``[P, V]`` (see the module docstring)."""
    unigram = zipf_unigram(vocab_size) if unigram is None else unigram
    support = min(support, vocab_size)
    logits = torch.randn(num_positions, vocab_size, generator=generator).add_(floor)
    ids = torch.multinomial(unigram, num_positions * support, replacement=True, generator=generator)
    ranks = torch.arange(1, support + 1, dtype=torch.float32)
    values = -alpha * torch.log(ranks) + noise * torch.randn(num_positions, support, generator=generator)
    logits.scatter_(1, ids.view(num_positions, support), values)
    return logits.to(dtype)
