"""The loader into CUDA tensors (``make gpu-check``; skipped without a GPU): host or device decode,
the side-stream copies, equal to the CPU batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.targets.sampling import sample_random
from logitcache.targets.synthetic import lm_like_logits
from logitcache.training import SparseKDLoader
from logitcache.training.batch_decode import decode_batch
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, make_records, running_server

pytestmark = pytest.mark.cuda

TEMPERED = SamplerConfig(rounds=20, temperature=0.8)  # weights stored: normalize changes the targets


def _tempered_records(count: int, start: int) -> list[tuple[int, bytes]]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for seq in range(start, start + count):
        targets = sample_random(
            lm_like_logits(SEQ_LEN, VOCAB, generator=gen), 20, temperature=TEMPERED.temperature, generator=gen
        )
        out.append((seq, records.encode(torch.randint(0, VOCAB, (SEQ_LEN,), generator=gen), targets)))
    return out


@pytest.mark.parametrize("device_decode", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_cuda_batches_equal_the_host_batches(tmp_path: Path, device_decode: bool, normalize: bool) -> None:
    with running_server(tmp_path) as (_, client):
        shards = {
            0: (MANIFEST, make_records(12, seed=1)),
            1: (TOPK_MANIFEST, make_records(9, seed=2, start=50, topk=True)),
            2: (ShardManifest.for_sampler(TEMPERED, VOCAB, seq_len=SEQ_LEN), _tempered_records(11, start=80)),
        }
        for shard, (manifest, items) in shards.items():
            client.create_shard(shard, manifest)
            client.write(shard, items)
            client.seal_shard(shard)
        host = list(SparseKDLoader(client, list(shards), batch_size=4, seed=3, normalize=normalize))
        loader = SparseKDLoader(
            client, list(shards), batch_size=4, seed=3, normalize=normalize, device="cuda", device_decode=device_decode
        )
        on_gpu = []
        for batch in loader:  # used at once, as a training step would: the copies must have landed
            on_gpu.append(({name: t.clone() for name, t in batch._tensors().items()}, batch))
    assert len(host) == len(on_gpu) == 8
    for a, (tensors, b) in zip(host, on_gpu, strict=True):
        assert (a.batch_index, a.input_hashes) == (b.batch_index, b.input_hashes)
        for name, tensor in a._tensors().items():
            assert tensors[name].is_cuda, name
            if tensor.is_floating_point():  # the device's float64 sums may round differently by an ulp
                torch.testing.assert_close(tensors[name].cpu(), tensor, rtol=1e-6, atol=1e-7, msg=name)
            else:
                assert torch.equal(tensors[name].cpu(), tensor), name


def test_the_batch_decoder_fills_pinned_tensors() -> None:
    tensors, _ = decode_batch([make_records(1)[0][1]], pin=True)
    assert all(t.is_pinned() for t in tensors.values())
