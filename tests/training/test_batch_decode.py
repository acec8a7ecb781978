"""The loader's batch decoder against its plain reference: ``records.decode`` of each record, padded in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitcache.core import records
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.synthetic import lm_like_logits
from logitcache.training.batch_decode import decode_batch, pad_decoded


def _record(kind: str, seed: int, positions: int, vocab: int = 128256) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    logits = lm_like_logits(positions, vocab, generator=gen)
    ids = torch.randint(0, vocab, (positions,), generator=gen)
    if kind == "sampled":
        return records.encode(ids, sample_random(logits, 50, generator=gen))
    if kind == "many_rounds":  # 2-byte counts, wider entries
        return records.encode(ids, sample_random(logits, 300, generator=gen))
    if kind == "weighted":  # tempered proposal: importance weights stored
        return records.encode(ids, sample_random(logits, 50, temperature=0.7, generator=gen))
    if kind == "topk":
        return records.encode(ids, sample_topk(logits, 12, top_p=0.9))
    if kind == "topk_3_bytes":  # the paper's 7-bit levels
        return records.encode(ids, sample_topk(logits, 12), topk_value_bits=7)
    if kind == "topk_wide":  # past the pairwise uniqueness scan
        return records.encode(ids, sample_topk(logits, 100))
    if kind == "dense":
        return records.encode(ids, sample_random(logits, 50, generator=gen), dense=True)
    raise AssertionError(kind)


KINDS = ["sampled", "many_rounds", "weighted", "topk", "topk_3_bytes", "topk_wide", "dense"]


def _assert_like_reference(blobs: list[bytes], normalize: bool) -> None:
    tensors, hashes = decode_batch(blobs, normalize=normalize, ignore_index=-7)
    reference = pad_decoded([records.decode(b) for b in blobs], normalize=normalize, ignore_index=-7)
    assert tensors.keys() == reference.keys()
    for name in ("input_ids", "labels", "attention_mask", "target_ids"):
        assert torch.equal(tensors[name], reference[name]), name
    exact = all(records.read_header(b).kind == "sampled" and not records.read_header(b).weighted for b in blobs)
    if exact:  # count / N: the same float32 division
        assert torch.equal(tensors["target_probs"], reference["target_probs"])
    else:  # the top-k ratio product and the weighted normalisation round in another order
        torch.testing.assert_close(tensors["target_probs"], reference["target_probs"], rtol=2e-6, atol=1e-9)
    assert hashes == [records.read_header(b).input_hash for b in blobs]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_each_kind_decodes_like_the_reference(kind: str, normalize: bool) -> None:
    _assert_like_reference([_record(kind, seed, 64) for seed in range(3)], normalize)


@pytest.mark.parametrize("seed", range(4))
def test_mixed_batches_of_every_kind_and_length(seed: int) -> None:
    """Records of different kinds, widths and lengths in one batch: padding past each record's end."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(KINDS, size=5)
    lengths = rng.integers(1, 80, size=5)
    vocabs = rng.choice([300, 50257, 128256], size=5)
    blobs = [
        _record(str(k), seed * 10 + i, int(t), int(v))
        for i, (k, t, v) in enumerate(zip(kinds, lengths, vocabs, strict=True))
    ]
    _assert_like_reference(blobs, normalize=True)
