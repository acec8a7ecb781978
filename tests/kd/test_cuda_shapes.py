"""The CUDA kernels at an LLM's shapes (``make gpu-check``; skipped without a GPU): N = 8192
positions, V = 128256 (Llama 3), K = 64, bf16 logits, against the reference in row blocks.

The rest of the KD suite runs on the GPU too when there is one (``tests/kd/conftest.py``), at
small shapes; these add the sizes where grid limits, int32 offsets and bf16 accumulation show."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from logitcache.kd import KDParams, fused_linear_sparse_kd_loss, sparse_kd_loss
from logitcache.kd.base import Mode
from logitcache.targets.sampling import sample_random
from tests.kd.cases import generator

pytestmark = pytest.mark.cuda

N, V, K, BLOCK = 8192, 128256, 64, 1024


def _targets(n: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets sampled (N = 50 rounds) from a random teacher, built block by block."""
    gen = generator(seed)
    ids, probs = [], []
    for _ in range(0, n, BLOCK):
        teacher = torch.randn(BLOCK, vocab, generator=gen) * 3
        block_ids, block_probs = sample_random(teacher, 50, generator=gen).to_padded(width=K)
        ids.append(block_ids)
        probs.append(block_probs)
    return torch.cat(ids), torch.cat(probs)


def _reference_in_blocks(
    logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, params: KDParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (sum) and fp32 gradient of the reference, a block of rows at a time (it is dense)."""
    total = torch.zeros((), dtype=torch.float64)
    grad = torch.empty(logits.shape, dtype=torch.float32)
    for lo in range(0, logits.shape[0], BLOCK):
        block = logits[lo : lo + BLOCK].detach().float().requires_grad_()
        loss = sparse_kd_loss(
            block, ids[lo : lo + BLOCK], probs[lo : lo + BLOCK], labels=labels[lo : lo + BLOCK], params=params
        )
        loss.backward()
        assert block.grad is not None
        grad[lo : lo + BLOCK] = block.grad
        total += loss.detach().double()
    return total, grad


@pytest.mark.parametrize("mode", ["kl", "ghost", "naive_fix"])
def test_triton_at_llm_shapes_matches_the_reference(mode: Mode) -> None:
    gen = generator(1)
    logits = (torch.randn(N, V, generator=gen) * 2).to(torch.bfloat16).requires_grad_()
    ids, probs = _targets(N, V, seed=2)
    labels = torch.randint(0, V, (N,), generator=gen)
    params = KDParams(mode=mode, ce_weight=0.25, reduction="sum", impl="triton")
    loss = sparse_kd_loss(logits, ids, probs, labels=labels, params=params)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.dtype == torch.bfloat16
    expected_loss, expected_grad = _reference_in_blocks(logits, ids, probs, labels, replace(params, impl="reference"))
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(logits.grad.float(), expected_grad, rtol=2e-2, atol=2e-4)


def test_fused_linear_at_llm_shapes_matches_the_unfused_loss() -> None:
    n, h = 4096, 576  # SmolLM2-135M's hidden size
    gen = generator(3)
    hidden = (torch.randn(n, h, generator=gen)).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, h, generator=gen) / h**0.5).to(torch.bfloat16).requires_grad_()
    ids, probs = _targets(n, V, seed=4)
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
