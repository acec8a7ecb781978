"""The CUDA kernels at an LLM's shapes (``make gpu-check``; skipped without a GPU): V = 128256
(Llama 3), N = 17408 positions (N·V past 2³¹, where int32 offsets would wrap), K = 64, bf16
logits, against the reference on the first block of rows and on the block past row 2³¹ / V.

The rest of the KD suite runs on the GPU too when there is one (``tests/kd/conftest.py``), at
small shapes. Random-sampling targets (N = 50 rounds) test ``"kl"``; top-64 targets, with their
residual mass, test ``"ghost"`` and ``"naive_fix"``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from logitcache.kd import KDParams, fused_linear_sparse_kd_loss, sparse_kd_loss
from logitcache.kd.base import Mode
from logitcache.targets.sampling import sample_random, sample_topk
from tests.kd.cases import generator

pytestmark = pytest.mark.cuda

N, V, K, BLOCK = 17408, 128256, 64, 1024
CHECKED = (slice(0, BLOCK), slice(N - BLOCK, N))  # the last block holds rows past 2**31 // V = 16744


def _targets(n: int, vocab: int, seed: int, *, topk: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets of a random teacher, built block by block: sampled (50 rounds) or top-K."""
    gen = generator(seed)
    ids, probs = [], []
    for _ in range(0, n, BLOCK):
        teacher = torch.randn(BLOCK, vocab, generator=gen) * 3
        drawn = sample_topk(teacher, K) if topk else sample_random(teacher, 50, generator=gen)
        block_ids, block_probs = drawn.to_padded(width=K)
        ids.append(block_ids)
        probs.append(block_probs)
    return torch.cat(ids)[:n], torch.cat(probs)[:n]


@pytest.mark.parametrize("mode", ["kl", "ghost", "naive_fix"])
def test_triton_at_llm_shapes_matches_the_reference(mode: Mode) -> None:
    assert N * V > 2**31
    gen = generator(1)
    logits = (torch.randn(N, V, generator=gen) * 2).to(torch.bfloat16).requires_grad_()
    ids, probs = _targets(N, V, seed=2, topk=mode != "kl")
    labels = torch.randint(0, V, (N,), generator=gen)
    params = KDParams(mode=mode, ce_weight=0.25, reduction="none", impl="triton")
    rows = sparse_kd_loss(logits, ids, probs, labels=labels, params=params)
    rows.sum().backward()
    assert logits.grad is not None
    assert logits.grad.dtype == torch.bfloat16
    reference = replace(params, impl="reference")
    for block in CHECKED:
        part = logits[block].detach().float().requires_grad_()
        expected = sparse_kd_loss(part, ids[block], probs[block], labels=labels[block], params=reference)
        expected.sum().backward()
        assert part.grad is not None
        torch.testing.assert_close(rows[block].detach(), expected.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits.grad[block].float(), part.grad, rtol=2e-2, atol=2e-4)


def test_fused_linear_at_llm_shapes_matches_the_unfused_loss() -> None:
    n, h = 4096, 576  # SmolLM2-135M's hidden size
    gen = generator(3)
    hidden = (torch.randn(n, h, generator=gen)).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, h, generator=gen) / h**0.5).to(torch.bfloat16).requires_grad_()
    ids, probs = _targets(n, V, seed=4, topk=False)
    labels = torch.randint(0, V, (n,), generator=gen)
    params = KDParams(mode="kl", ce_weight=0.25, reduction="sum")
    loss = fused_linear_sparse_kd_loss(hidden, weight, ids, probs, labels=labels, params=params)
    loss.backward()
    assert hidden.grad is not None
    assert weight.grad is not None
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    expected = sparse_kd_loss(h32 @ w32.T, ids, probs, labels=labels, params=replace(params, impl="chunked"))
    expected.backward()
    assert h32.grad is not None
    assert w32.grad is not None
    torch.testing.assert_close(loss.double(), expected.double(), rtol=2e-3, atol=0)  # bf16 matmul vs fp32
    scale_h, scale_w = h32.grad.abs().max(), w32.grad.abs().max()
    torch.testing.assert_close(hidden.grad.float() / scale_h, h32.grad / scale_h, rtol=0, atol=3e-2)
    torch.testing.assert_close(weight.grad.float() / scale_w, w32.grad / scale_w, rtol=0, atol=3e-2)
