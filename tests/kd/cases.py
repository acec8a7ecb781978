"""Shared builders for the KD tests: student logits and padded sparse targets of either kind.

Every KD test runs on ``DEVICE``: the GPU when there is one (where ``impl="triton"`` runs natively),
else the CPU (where Triton runs in interpreter mode, see ``tests/conftest.py``). ``conftest.py``
makes it torch's default device for these tests; random tensors come from :func:`generator`,
seeded with fixed integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from logitcache.targets.sampling import sample_random, sample_topk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generator(seed: int) -> torch.Generator:
    """A generator on ``DEVICE`` seeded with ``seed`` (a fixed integer: the same case in every process)."""
    return torch.Generator(DEVICE).manual_seed(seed)


@dataclass
class Case:
    logits: Tensor  # [N, V] fp32, requires grad
    ids: Tensor  # [N, K]
    probs: Tensor  # [N, K]
    labels: Tensor  # [N]


def make_case(
    n: int = 37,
    vocab: int = 1271,
    k: int = 13,
    *,
    kind: str = "sampled",
    seed: int = 0,
    empty_rows: tuple[int, ...] = (),
    scale: float = 2.0,
) -> Case:
    """Random student logits and targets sampled from a random teacher (padded to ``k``)."""
    gen = generator(seed)
    teacher = torch.randn(n, vocab, generator=gen) * scale
    if kind == "topk":
        ids, probs = sample_topk(teacher, k).to_padded(width=k)
    else:
        rounds = max(1, k)
        targets = sample_random(teacher, rounds, generator=gen)
        ids, probs = targets.to_padded(width=max(k, int(targets.entry_counts().max())))
    for row in empty_rows:
        ids[row] = -1
        probs[row] = 0.0
    logits = (torch.randn(n, vocab, generator=gen) * scale).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=gen)
    return Case(logits, ids, probs, labels)
