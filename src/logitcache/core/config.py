"""What a sparse target is, before any tensor exists: the kinds, the sampler configuration, the limits.

The record format (:mod:`logitcache.core.records`) and the shard manifest
(:mod:`logitcache.core.manifest`) need these, and neither needs torch: the samplers that act on
a :class:`SamplerConfig` are :mod:`logitcache.targets.sampling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_ROUNDS", "MAX_VOCAB_SIZE", "METHODS", "Method", "SamplerConfig", "TargetKind"]

MAX_ROUNDS = 65535
"""Largest number of sampling rounds (and of top-k's k): counts must fit the record's 16 bits."""

MAX_VOCAB_SIZE = 1 << 24
"""Largest vocabulary a record can address (24-bit token ids)."""

METHODS = ("multinomial", "systematic", "topk")
TargetKind = Literal["sampled", "topk"]
Method = Literal["multinomial", "systematic", "topk"]


@dataclass(frozen=True)
class SamplerConfig:
    """How to sparsify a teacher distribution. Validated on construction (``ValueError``)."""

    method: Method = "multinomial"  # "multinomial" | "systematic" (random sampling) | "topk"
    rounds: int = 50  # N: draws per position for the random methods (≈12 unique on LM data)
    temperature: float = 1.0  # proposal temperature t: q ∝ p^t (random methods only)
    k: int = 12  # top-k: entries kept per position
    top_p: float | None = None  # top-k only: also stop once this much mass is kept
    chunk_size: int | None = None  # positions per chunk; None → logitcache.chunks.default_chunk_size(V)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds: expected 1 <= rounds <= {MAX_ROUNDS}, got {self.rounds}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"temperature: expected a finite value > 0, got {self.temperature} "
                "(t = 0 is the uniform proposal, which the paper shows diverges)"
            )
        if not 1 <= self.k <= MAX_ROUNDS:
            raise ValueError(f"k: expected 1 <= k <= {MAX_ROUNDS}, got {self.k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected 0 < top_p <= 1, got {self.top_p}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {self.chunk_size}")
