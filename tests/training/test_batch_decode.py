"""The loader's batch decoder against its plain reference: ``records.decode`` of each record, padded in numpy."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
import torch

from logitcache.core import records
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.synthetic import lm_like_logits
from logitcache.training.batch_decode import decode_batch, decode_batch_on, pad_decoded
from logitcache.training.batch_memory import BufferPool, SharedSlabPool, rebuild_from_slab


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
    """The host batch decoder and the device one (here on the CPU) against the numpy reference."""
    reference = pad_decoded([records.decode(b) for b in blobs], normalize=normalize, ignore_index=-7)
    for decoder in (decode_batch, functools.partial(decode_batch_on, device="cpu")):
        _assert_like(decoder(blobs, normalize=normalize, ignore_index=-7), reference, blobs)


def _assert_like(
    decoded: tuple[dict[str, torch.Tensor], list[int]], reference: dict[str, torch.Tensor], blobs: list[bytes]
) -> None:
    tensors, hashes = decoded
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


def test_views_and_pooled_memory_decode_the_same() -> None:
    """Records as memoryviews into one message (the loader's) and tensors carved from reused memory
    (:mod:`~logitcache.training.batch_memory`) give the same batch as fresh tensors from bytes."""
    blobs = [_record("sampled", seed, 40 + seed) for seed in range(3)] + [_record("dense", 9, 30)]
    message = memoryview(b"".join(blobs))
    views, at = [], 0
    for blob in blobs:
        views.append(message[at : at + len(blob)])
        at += len(blob)
    reference, hashes = decode_batch(blobs)
    for pool in (BufferPool(2), SharedSlabPool(2)):
        for _ in range(3):  # the second and third reuse the first one's memory
            pooled, pooled_hashes = decode_batch(views, pool=pool)
            assert pooled_hashes == hashes
            for name, tensor in pooled.items():
                assert tensor.is_contiguous(), name
                assert tensor.dtype == reference[name].dtype, name
                assert torch.equal(tensor, reference[name]), name
            del pooled


def test_a_buffer_pool_reuses_memory_only_when_nothing_refers_to_it() -> None:
    pool = BufferPool(2)
    first = pool.take(100)
    held = torch.from_numpy(first[:64].view(np.int64)).view(2, 4)  # a view of a view keeps it in use
    del first
    second = pool.take(100)
    assert not np.shares_memory(second, held.numpy())
    del second
    third = pool.take(100)  # the second's slab is free again
    assert not np.shares_memory(third, held.numpy())
    del third, held
    assert len(pool._slabs) == 2
    fourth, fifth = pool.take(100), pool.take(100)
    assert {id(fourth.base), id(fifth.base)} == {id(s) for s in pool._slabs}
    sixth = pool.take(100)  # both in use, the pool full: fresh memory, not kept
    assert len(pool._slabs) == 2
    assert all(sixth.base is not s for s in pool._slabs)


def test_a_shared_slab_goes_back_to_the_pool_when_the_receiver_drops_its_batch() -> None:
    """A worker's batch pickled as the torch DataLoader pickles it (ForkingPickler: the slab travels as
    a shared-memory handle, not a copy); the slab is reused once every rebuilt tensor and view is gone."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing

    blobs = [_record("sampled", seed, 50) for seed in range(2)]
    reference, _ = decode_batch(blobs)
    pool = SharedSlabPool(1)
    tensors, _ = decode_batch(blobs, pool=pool)
    slab, layout = pool.reduce(tensors) or (None, {})
    assert slab is not None
    assert slab.is_shared()
    wire = ForkingPickler.dumps((slab, layout))
    del tensors, slab
    received = rebuild_from_slab(*pickle.loads(wire))
    for name, tensor in received.items():
        assert torch.equal(tensor, reference[name]), name
    kept = received["target_ids"].flatten(0, 1)[3:]
    del received, tensor
    other, _ = decode_batch(blobs, pool=pool)  # the receiver still holds a view: fresh memory
    assert pool.reduce(other) is None
    del kept
    again, _ = decode_batch(blobs, pool=pool)  # released: the first slab again
    assert pool.reduce(again) is not None
