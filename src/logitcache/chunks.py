"""How many positions a chunked pass over ``[positions, V]`` takes at a time, when not told.

Plain Python (no torch), below both users: the teacher-side samplers (:mod:`logitcache.targets.sampling`)
and the sparse-KD loss (:mod:`logitcache.kd.chunked`, :mod:`logitcache.kd.fused_linear`).

* The samplers count one buffer, the CDF, and give it the whole budget (an upcast of fp16 / bf16
  logits and, when ``t != 1``, a temporary of the same size come on top): ``default_chunk_size(V)``.
* The KD loss splits the budget over the four fp32 ``[chunk, V]`` buffers
  :func:`~logitcache.kd.chunked.kd_chunk` can hold at once (the upcast or scaled logits, the
  log-softmax, the ghost mode's ``q``, the temperature-1 log-softmax of the CE term) and takes at
  most 4096 positions: ``default_chunk_size(V, buffers=4, max_positions=4096)``, 32 MiB a buffer.

These are the figures each side has always used; nothing records why they differ, and they are
kept because peak memory, the fused-linear loss's summation order and, on CUDA, what the samplers
draw from a generator can depend on them.
"""

from __future__ import annotations

__all__ = ["CHUNK_ELEMENTS", "default_chunk_size"]

CHUNK_ELEMENTS = 1 << 25
"""The budget of one chunk's full-width scratch: 32 Mi fp32 values (128 MiB) of ``[chunk, V]``
buffers, split evenly over the ``buffers`` the caller counts."""


def default_chunk_size(vocab_size: int, *, buffers: int = 1, max_positions: int | None = None) -> int:
    """Positions per chunk so that each of ``buffers`` fp32 ``[chunk, V]`` buffers holds at most
    ``CHUNK_ELEMENTS // buffers`` values; at least 1, at most ``max_positions``."""
    positions = (CHUNK_ELEMENTS // buffers) // max(1, vocab_size)
    if max_positions is not None:
        positions = min(max_positions, positions)
    return max(1, positions)
