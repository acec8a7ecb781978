"""fused_linear_sparse_kd_loss against sparse_kd_loss(hidden @ weight.T)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from logitcache.kd import KDParams, fused_linear_sparse_kd_loss, sparse_kd_loss
from tests.kd.cases import generator, make_case

TENSORS = ("labels", "mask", "weights")


def _grads(
    fn: Any, hidden: torch.Tensor, weight: torch.Tensor, scale: float, **kwargs: Any
) -> tuple[torch.Tensor, ...]:
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w, **kwargs)
    (loss * scale).backward()
    assert h.grad is not None
    assert w.grad is not None
    return loss.detach(), h.grad, w.grad


def _split(kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """``(target_ids, target_probs, the labels / mask / weights, the KDParams options)``."""
    ids, probs = kwargs.pop("target_ids"), kwargs.pop("target_probs")
    tensors = {name: kwargs.pop(name) for name in TENSORS if name in kwargs}
    return ids, probs, tensors, kwargs


def _unfused(h: torch.Tensor, w: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    ids, probs, tensors, options = _split(kwargs)
    return sparse_kd_loss(h @ w.T, ids, probs, **tensors, params=KDParams(impl="reference", **options))


def _fused(h: torch.Tensor, w: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    ids, probs, tensors, options = _split(kwargs)
    return fused_linear_sparse_kd_loss(h, w, ids, probs, **tensors, params=KDParams(chunk_size=7, **options))


@pytest.mark.parametrize("mode", ["kl", "ghost", "naive_fix"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_matches_logits_from_a_matmul(mode: str, reduction: str, temperature: float) -> None:
    case = make_case(29, 301, 9, kind="topk", seed=3, empty_rows=(2,))
    gen = generator(4)
    hidden = torch.randn(29, 48, generator=gen)
    weight = torch.randn(301, 48, generator=gen) / 6
    labels = case.labels.clone()
    labels[5] = -100
    kwargs: dict[str, Any] = {
        "target_ids": case.ids,
        "target_probs": case.probs,
        "labels": labels,
        "mode": mode,
        "ce_weight": 0.25,
        "temperature": temperature,
        "reduction": reduction,
        "weights": torch.rand(29, generator=gen),
    }
    got = _grads(_fused, hidden, weight, 2.5, **dict(kwargs))
    ref = _grads(_unfused, hidden, weight, 2.5, **dict(kwargs))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_inputs() -> None:
    case = make_case(16, 257, 5, kind="topk", seed=5)
    gen = generator(6)
    hidden = torch.randn(16, 32, generator=gen).bfloat16()
    weight = (torch.randn(257, 32, generator=gen) / 4).bfloat16()
    kwargs = {"target_ids": case.ids, "target_probs": case.probs}
    loss, gh, gw = _grads(_fused, hidden, weight, 1.0, **kwargs)
    ref_loss, ref_gh, ref_gw = _grads(_unfused, hidden, weight, 1.0, **kwargs)
    assert gh.dtype == torch.bfloat16
    assert gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for got, ref in ((gh, ref_gh), (gw, ref_gw)):
        assert (got.float() - ref.float()).abs().max() <= 3e-2 * ref.float().abs().max()


def test_only_hidden_needs_grad() -> None:
    case = make_case(8, 64, 4, kind="topk", seed=7)
    hidden = torch.randn(8, 16, requires_grad=True)
    weight = torch.randn(64, 16)
    fused_linear_sparse_kd_loss(hidden, weight, case.ids, case.probs).backward()
    assert hidden.grad is not None
    assert weight.grad is None


def test_bad_input() -> None:
    case = make_case(8, 64, 4, kind="topk", seed=8)
    hidden = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"weight: expected shape \[V, H=16\], got \[64, 15\]"):
        fused_linear_sparse_kd_loss(hidden, torch.randn(64, 15), case.ids, case.probs)
    with pytest.raises(ValueError, match=r"weight: expected torch\.float32"):
        fused_linear_sparse_kd_loss(hidden, torch.randn(64, 16).bfloat16(), case.ids, case.probs)
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum'"):
        fused_linear_sparse_kd_loss(
            hidden, torch.randn(64, 16), case.ids, case.probs, params=KDParams(reduction="none")
        )
    with pytest.raises(ValueError, match=r"target_ids: expected ids in \[0, V=32\)"):
        fused_linear_sparse_kd_loss(hidden, torch.randn(32, 16), case.ids, case.probs)
