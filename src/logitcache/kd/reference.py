"""The reference sparse-KD loss: dense tensors and plain autograd, in float64. For tests only.

It builds the dense ``[N, V]`` target and the full softmax, exactly what the fast
implementations avoid, and lets autograd find the gradient. Everything the fast paths compute
in closed form is pinned to this.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitcache.kd.base import KDParams, PreparedTargets, ghost_mass

__all__ = ["reference_rows"]


def reference_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
    """Per-position weighted losses ``[N]`` (float32), differentiable through autograd."""
    x = logits.double()
    n, vocab = x.shape
    logp = torch.log_softmax(x / params.temperature, dim=-1)
    valid = prepared.ids >= 0
    safe = prepared.ids.clamp_min(0)
    target = torch.zeros(n, vocab, dtype=torch.float64, device=x.device)
    target.scatter_add_(1, safe, torch.where(valid, prepared.probs.double(), 0.0))
    kd = (torch.xlogy(target, target) - torch.where(target > 0, target * logp, 0.0)).sum(dim=1)
    if params.ghost:
        in_k = torch.zeros(n, vocab, device=x.device).scatter_add_(1, safe, valid.float()) > 0
        ghost_s = torch.where(in_k, 0.0, logp.exp()).sum(dim=1)  # the student's mass outside K
        ghost_t = ghost_mass(prepared.probs.sum(dim=1)).double()
        kd = kd + torch.xlogy(ghost_t, ghost_t) - torch.xlogy(ghost_t, ghost_s)
    loss = (1.0 - params.ce_weight) * kd
    if params.ce_weight > 0:
        ce = -torch.log_softmax(x, dim=-1).gather(1, prepared.labels[:, None]).squeeze(1)
        loss = loss + params.ce_weight * ce
    weight = prepared.row_weight.double()
    return torch.where(weight > 0, weight * loss, 0.0).float()
