"""``nn.Module`` wrappers around the sparse-KD losses, for people who prefer modules.

Example::

    loss_fn = SparseKDLoss(params=KDParams(mode="kl", ce_weight=0.1))
    loss = loss_fn(logits.view(-1, V), target_ids, target_probs, labels=labels.view(-1))
"""

from __future__ import annotations

from torch import Tensor, nn

from logitcache.kd.base import KDParams, resolve_params
from logitcache.kd.fused_linear import check_fused_params, fused_linear_sparse_kd_loss
from logitcache.kd.loss import sparse_kd_loss

__all__ = ["FusedLinearSparseKDLoss", "SparseKDLoss"]


class SparseKDLoss(nn.Module):
    """:func:`~logitcache.kd.loss.sparse_kd_loss` with its options (a :class:`~logitcache.kd.base.KDParams`)
    fixed at construction."""

    def __init__(self, *, params: KDParams | None = None) -> None:
        super().__init__()
        self.params = resolve_params(params)

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
            logits, target_ids, target_probs, labels=labels, mask=mask, weights=weights, params=self.params
        )

    def extra_repr(self) -> str:
        p = self.params
        return f"mode={p.mode!r}, ce_weight={p.ce_weight}, temperature={p.temperature}, impl={p.impl!r}"


class FusedLinearSparseKDLoss(nn.Module):
    """:func:`~logitcache.kd.fused_linear.fused_linear_sparse_kd_loss` as a module, its options (a
    :class:`~logitcache.kd.base.KDParams`) fixed and checked at construction.

    ``forward(hidden [N, H], lm_head_weight [V, H], target_ids, target_probs, ...)``.
    """

    def __init__(self, *, params: KDParams | None = None) -> None:
        super().__init__()
        self.params = resolve_params(params)
        check_fused_params(self.params)  # now, not at the first batch

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
            hidden,
            lm_head_weight,
            target_ids,
            target_probs,
            labels=labels,
            mask=mask,
            weights=weights,
            params=self.params,
        )

    def extra_repr(self) -> str:
        p = self.params
        return f"mode={p.mode!r}, ce_weight={p.ce_weight}, temperature={p.temperature}"
