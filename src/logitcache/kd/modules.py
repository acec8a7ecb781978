"""``nn.Module`` wrappers around the sparse-KD losses, for people who prefer modules.

Example::

    loss_fn = SparseKDLoss(mode="kl", ce_weight=0.1)
    loss = loss_fn(logits.view(-1, V), target_ids, target_probs, labels=labels.view(-1))
"""

from __future__ import annotations

from dataclasses import asdict

from torch import Tensor, nn

from logitcache.kd.base import Impl, KDParams, Mode, Reduction
from logitcache.kd.fused_linear import fused_linear_sparse_kd_loss
from logitcache.kd.loss import sparse_kd_loss

__all__ = ["FusedLinearSparseKDLoss", "SparseKDLoss"]


class SparseKDLoss(nn.Module):
    """:func:`~logitcache.kd.loss.sparse_kd_loss` with its options fixed at construction."""

    def __init__(
        self,
        *,
        mode: Mode = "kl",
        ce_weight: float = 0.0,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        impl: Impl = "auto",
        chunk_size: int | None = None,
        mass_tolerance: float = 1e-3,
    ) -> None:
        super().__init__()
        # validates now, not at the first batch
        self.params = KDParams(mode, ce_weight, temperature, ignore_index, reduction, mass_tolerance, chunk_size)
        self.impl: Impl = impl

    def forward(
        self,
        logits: Tensor,  # [N, V]
        target_ids: Tensor,  # [N, K]
        target_probs: Tensor,  # [N, K]
        labels: Tensor | None = None,  # [N]
        mask: Tensor | None = None,  # [N] bool
        weights: Tensor | None = None,  # [N]
    ) -> Tensor:
        return sparse_kd_loss(
            logits, target_ids, target_probs, labels=labels, mask=mask, weights=weights, impl=self.impl,
            **asdict(self.params),
        )  # fmt: skip

    def extra_repr(self) -> str:
        p = self.params
        return f"mode={p.mode!r}, ce_weight={p.ce_weight}, temperature={p.temperature}, impl={self.impl!r}"


class FusedLinearSparseKDLoss(nn.Module):
    """:func:`~logitcache.kd.fused_linear.fused_linear_sparse_kd_loss` as a module.

    ``forward(hidden [N, H], lm_head_weight [V, H], target_ids, target_probs, ...)``.
    """

    def __init__(
        self,
        *,
        mode: Mode = "kl",
        ce_weight: float = 0.0,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        chunk_size: int | None = None,
        mass_tolerance: float = 1e-3,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum' for the fused-linear loss, got {reduction!r}")
        self.params = KDParams(mode, ce_weight, temperature, ignore_index, reduction, mass_tolerance, chunk_size)

    def forward(
        self,
        hidden: Tensor,  # [N, H]
        lm_head_weight: Tensor,  # [V, H]
        target_ids: Tensor,  # [N, K]
        target_probs: Tensor,  # [N, K]
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        return fused_linear_sparse_kd_loss(
            hidden, lm_head_weight, target_ids, target_probs, labels=labels, mask=mask, weights=weights,
            **asdict(self.params),
        )  # fmt: skip

    def extra_repr(self) -> str:
        p = self.params
        return f"mode={p.mode!r}, ce_weight={p.ce_weight}, temperature={p.temperature}"
