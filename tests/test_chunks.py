"""logitcache.chunks: the one default chunk size, with the figures the samplers and the KD loss have always used."""

from __future__ import annotations

import pytest

from logitcache.chunks import CHUNK_ELEMENTS, default_chunk_size


@pytest.mark.parametrize("vocab", [0, 1, 7, 50, 2047, 2048, 2049, 32768, 128256, 1 << 25, (1 << 25) + 1, 1 << 26])
def test_the_two_budgets(vocab: int) -> None:
    assert default_chunk_size(vocab) == max(1, (1 << 25) // max(1, vocab))  # samplers: 128 MiB a buffer
    kd = default_chunk_size(vocab, buffers=4, max_positions=4096)
    assert kd == max(1, min(4096, (1 << 23) // max(1, vocab)))  # KD loss: 32 MiB a buffer, <= 4096 positions
    assert CHUNK_ELEMENTS == 1 << 25
