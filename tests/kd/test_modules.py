"""The nn.Module wrappers call the functions with their stored options."""

from __future__ import annotations

import pytest
import torch

from logitcache.kd import FusedLinearSparseKDLoss, KDParams, SparseKDLoss, fused_linear_sparse_kd_loss, sparse_kd_loss
from tests.kd.cases import make_case


def test_sparse_kd_module() -> None:
    case = make_case(kind="topk", seed=1)
    params = KDParams(mode="ghost", ce_weight=0.2, temperature=1.5)
    module = SparseKDLoss(params=params)
    got = module(case.logits.detach(), case.ids, case.probs, labels=case.labels)
    ref = sparse_kd_loss(case.logits.detach(), case.ids, case.probs, labels=case.labels, params=params)
    torch.testing.assert_close(got, ref)
    assert "ghost" in repr(module)


def test_fused_module() -> None:
    case = make_case(10, 64, 4, kind="topk", seed=2)
    hidden, weight = torch.randn(10, 8), torch.randn(64, 8)
    got = FusedLinearSparseKDLoss(params=KDParams(mode="kl"))(hidden, weight, case.ids, case.probs)
    torch.testing.assert_close(got, fused_linear_sparse_kd_loss(hidden, weight, case.ids, case.probs))


def test_modules_validate_at_construction() -> None:
    with pytest.raises(ValueError, match="mode"):
        SparseKDLoss(params=KDParams(mode="mse"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        FusedLinearSparseKDLoss(params=KDParams(reduction="none"))


def test_params_are_built_by_keyword_and_checked() -> None:
    with pytest.raises(TypeError):
        KDParams("ghost")  # type: ignore[call-arg]
    case = make_case(6, 50, 4, kind="topk", seed=3)
    with pytest.raises(TypeError, match="params: expected a KDParams or None, got dict"):
        sparse_kd_loss(case.logits.detach(), case.ids, case.probs, params={"mode": "ghost"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl: expected 'auto' or 'chunked' for the fused-linear loss"):
        FusedLinearSparseKDLoss(params=KDParams(impl="triton"))
