"""CacheWriter with CUDA teacher logits (``make gpu-check``; skipped without a GPU): the pinned
copies and events, sampling on the device, the stored bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.targets.sampling import sample
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.writer import CacheWriter, sequence_seed
from tests.server.helpers import running_server

pytestmark = pytest.mark.cuda

V, T = 32000, 64


@pytest.mark.parametrize("sampler", [SamplerConfig(rounds=50), SamplerConfig(rounds=50, temperature=0.8)])
def test_cuda_logits_are_stored_exactly_as_sampled_on_the_device(tmp_path: Path, sampler: SamplerConfig) -> None:
    host = torch.Generator().manual_seed(1)
    logits = lm_like_logits(4 * T, V, generator=host, dtype=torch.bfloat16).reshape(4, T, V).cuda()
    ids = torch.randint(0, V, (4, T), generator=host).cuda()
    expected_ids = ids.cpu().clone()
    with running_server(tmp_path) as (_, client):
        with CacheWriter(client, 0, sampler, seed=7, seq_len=T, batch_records=1) as writer:
            for b in range(0, 4, 2):
                writer.write([b, b + 1], ids[b : b + 2], logits[b : b + 2])
            ids.zero_()  # the caller reuses its buffers at once: the writer's copies were ordered before
            logits.zero_()
        fresh = lm_like_logits(4 * T, V, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16).cuda()
        expected = [
            sample(fresh[s * T : (s + 1) * T], sampler, torch.Generator("cuda").manual_seed(sequence_seed(7, 0, s))).to(
                "cpu"
            )
            for s in range(4)
        ]
        stored = [records.decode(data) for _, data in client.read(0, seqs=range(4))]
    for seq, record in enumerate(stored):
        np.testing.assert_array_equal(record.input_ids, expected_ids[seq].numpy())
    got = [SparseTargets.from_record(r) for r in stored]
    assert torch.equal(torch.cat([t.token_ids for t in got]), torch.cat([t.token_ids for t in expected]))
    assert torch.equal(torch.cat([t.values for t in got]), torch.cat([t.values for t in expected]))
    if sampler.temperature != 1.0:
        assert all(t.weights is not None for t in got)
        torch.testing.assert_close(
            torch.cat([t.weights for t in got if t.weights is not None]),
            torch.cat([t.weights for t in expected if t.weights is not None]),
            rtol=0,
            atol=0,
        )
