"""The nn.Module wrappers call the functions with their stored options."""

from __future__ import annotations

import pytest
import torch

from logitcache.kd import FusedLinearSparseKDLoss, SparseKDLoss, fused_linear_sparse_kd_loss, sparse_kd_loss
from tests.kd.cases import make_case


def test_sparse_kd_module() -> None:
    case = make_case(kind="topk", seed=1)
    module = SparseKDLoss(mode="ghost", ce_weight=0.2, temperature=1.5)
    got = module(case.logits.detach(), case.ids, case.probs, labels=case.labels)
    ref = sparse_kd_loss(
        case.logits.detach(), case.ids, case.probs, labels=case.labels, mode="ghost", ce_weight=0.2, temperature=1.5
    )
    torch.testing.assert_close(got, ref)
    assert "ghost" in repr(module)


def test_fused_module() -> None:
    case = make_case(10, 64, 4, kind="topk", seed=2)
    hidden, weight = torch.randn(10, 8), torch.randn(64, 8)
    got = FusedLinearSparseKDLoss(mode="kl")(hidden, weight, case.ids, case.probs)
    torch.testing.assert_close(got, fused_linear_sparse_kd_loss(hidden, weight, case.ids, case.probs))


def test_modules_validate_at_construction() -> None:
    with pytest.raises(ValueError, match="mode"):
        SparseKDLoss(mode="mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        FusedLinearSparseKDLoss(reduction="none")
