"""The loader into CUDA tensors (``make gpu-check``; skipped without a GPU): host or device decode,
the side-stream copies, equal to the CPU batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from logitcache.training import SparseKDLoader
from tests.server.helpers import MANIFEST, make_records, running_server

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("device_decode", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_cuda_batches_equal_the_host_batches(tmp_path: Path, device_decode: bool, normalize: bool) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(20, seed=1))
        client.create_shard(1, MANIFEST)
        client.write(1, make_records(9, seed=2, start=50, topk=False))
        host = list(SparseKDLoader(client, [0, 1], batch_size=4, seed=3, normalize=normalize))
        loader = SparseKDLoader(
            client, [0, 1], batch_size=4, seed=3, normalize=normalize, device="cuda", device_decode=device_decode
        )
        on_gpu = []
        for batch in loader:  # used at once, as a training step would: the copies must have landed
            on_gpu.append({name: tensor.clone() for name, tensor in batch._tensors().items()})
            assert batch.input_hashes is not None
    assert len(host) == len(on_gpu) == 8
    for a, b in zip(host, on_gpu, strict=True):
        for name, tensor in a._tensors().items():
            assert b[name].is_cuda, name
            assert torch.equal(tensor, b[name].cpu()), name
