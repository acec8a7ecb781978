"""The reference sparse-KD loss: dense tensors and plain autograd, in float64. For tests only.

It builds the dense ``[N, V]`` target and the full softmax, exactly what the fast
implementations avoid, and lets autograd find the gradient. Everything the fast paths compute
in closed form is pinned to this.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitcache.kd.loss import KDParams, PreparedTargets

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
        student_mass = torch.where(in_k, logp.exp(), 0.0).sum(dim=1)
        ghost_t = (1.0 - target.sum(dim=1)).clamp_min(0.0)
        ghost_s = (1.0 - student_mass).clamp_min(torch.finfo(torch.float32).tiny)
        kd = kd + torch.xlogy(ghost_t, ghost_t) - ghost_t * ghost_s.log()
    loss = (1.0 - params.ce_weight) * kd
    if params.ce_weight > 0:
        ce = -torch.log_softmax(x, dim=-1).gather(1, prepared.labels[:, None]).squeeze(1)
        loss = loss + params.ce_weight * ce
    return (prepared.row_weight.double() * loss).float()
