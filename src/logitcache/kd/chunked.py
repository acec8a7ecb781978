"""The chunked sparse-KD implementation (pure torch, any device) and the autograd glue it shares.

:func:`kd_chunk` computes, for a block of positions, the per-position loss and the gradient with
respect to the logits in closed form (see :mod:`logitcache.kd.loss`):

    ∂L/∂x = w · [ (1 − α)/τ · (a·s_τ + Σ_k c_k e_{id_k}) + α·(s_1 − e_label) ]

with ``a = Σ t`` and ``c_k = −t_k`` for ``"kl"``, and for ``"ghost"`` ``a = 1 − t_g/s_g`` and
``c_k = s_k (1 − a) − t_k``. One ``log_softmax`` per chunk (written straight into the gradient
buffer when the logits are fp32), an in-place ``exp`` and scale, and a scatter of ``K`` entries.

:class:`PrecomputedGradKD` is the ``autograd.Function`` both this and the Triton implementation
use: the forward pass computes the loss rows and the full gradient at once, the backward pass
only scales it by the incoming gradient (in place, so backward may run once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from logitcache.kd.loss import KDParams, PreparedTargets

__all__ = ["PrecomputedGradKD", "chunked_rows", "default_chunk_size", "kd_chunk"]

_TINY = torch.finfo(torch.float32).tiny

Compute = Callable[[Tensor, PreparedTargets, KDParams, bool], tuple[Tensor, Tensor | None]]


def default_chunk_size(vocab_size: int) -> int:
    """Positions per chunk: about 32 MiB of fp32 scratch per ``[chunk, V]`` buffer."""
    return max(1, min(4096, (1 << 23) // max(1, vocab_size)))


def kd_chunk(
    logits: Tensor,  # [c, V] fp32 / bf16 / fp16
    ids: Tensor,  # [c, K] int64, -1 = padding
    probs: Tensor,  # [c, K] fp32, 0 at padding
    labels: Tensor,  # [c] int64 (valid indices)
    row_weight: Tensor,  # [c] fp32
    params: KDParams,
    grad_out: Tensor | None,  # [c, V] in the logits' dtype, or None for the loss only
) -> Tensor:
    """Loss per position ``[c]`` (already times ``row_weight``); writes ``∂L/∂logits`` into ``grad_out``."""
    inv_t = 1.0 / params.temperature
    alpha = params.ce_weight
    z = logits.float()
    if inv_t != 1.0:
        z = z * inv_t
    scratch = grad_out if grad_out is not None and grad_out.dtype == torch.float32 else None
    logp = torch.log_softmax(z, dim=-1, out=scratch) if scratch is not None else torch.log_softmax(z, dim=-1)
    valid = ids >= 0
    safe = ids.clamp_min(0)
    logp_k = logp.gather(1, safe)  # [c, K]
    total = probs.sum(dim=1)
    kd = torch.xlogy(probs, probs).sum(dim=1) - torch.where(valid, probs * logp_k, 0.0).sum(dim=1)
    a = total
    s_k = torch.where(valid, logp_k.exp(), 0.0)
    if params.ghost:
        student_mass = s_k.sum(dim=1)
        ghost_t = (1.0 - total).clamp_min(0.0)
        ghost_s = (1.0 - student_mass).clamp_min(_TINY)
        kd = kd + torch.xlogy(ghost_t, ghost_t) - ghost_t * ghost_s.log()
        a = total - ghost_t * student_mass / ghost_s
    loss = (1.0 - alpha) * kd
    logp_ce = logp if inv_t == 1.0 else None
    if alpha > 0:
        if logp_ce is None:
            logp_ce = torch.log_softmax(logits.float(), dim=-1)
        loss = loss + alpha * -logp_ce.gather(1, labels[:, None]).squeeze(1)
    rows = row_weight * loss
    if grad_out is None:
        return rows
    kd_scale = row_weight * ((1.0 - alpha) * inv_t)  # [c]
    coef = kd_scale * a
    if alpha > 0 and logp_ce is logp:
        coef = coef + row_weight * alpha  # s_τ = s_1: both terms scale the same softmax
    grad = logp.exp_().mul_(coef[:, None])
    if alpha > 0 and logp_ce is not logp and logp_ce is not None:
        grad.add_(logp_ce.exp_().mul_((row_weight * alpha)[:, None]))
    correction = -probs
    if params.ghost:
        correction = correction + s_k * (1.0 - a)[:, None]
    grad.scatter_add_(1, safe, torch.where(valid, correction * kd_scale[:, None], 0.0))
    if alpha > 0:
        grad.scatter_add_(1, labels[:, None], -(row_weight * alpha)[:, None])
    if grad is not grad_out:
        grad_out.copy_(grad)
    return rows


def _chunked_compute(
    logits: Tensor, prepared: PreparedTargets, params: KDParams, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n, vocab = logits.shape
    grad = torch.empty_like(logits) if need_grad else None
    rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    step = params.chunk_size or default_chunk_size(vocab)
    for start in range(0, n, step):
        end = min(n, start + step)
        rows[start:end] = kd_chunk(
            logits[start:end],
            prepared.ids[start:end],
            prepared.probs[start:end],
            prepared.labels[start:end],
            prepared.row_weight[start:end],
            params,
            None if grad is None else grad[start:end],
        )
    return rows, grad


class PrecomputedGradKD(torch.autograd.Function):
    """Loss rows whose gradient is computed in the forward pass by ``compute``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, prepared: PreparedTargets, params: KDParams, compute: Compute) -> Tensor:
        with torch.no_grad():
            rows, grad = compute(logits.detach(), prepared, params, logits.requires_grad)
        ctx.grad = grad
        return rows

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor | None, None, None, None]:
        grad: Tensor | None = ctx.grad
        if grad is None:
            raise RuntimeError("sparse_kd_loss: backward ran twice; the gradient buffer is consumed")
        ctx.grad = None
        if not bool((grad_rows == 1).all()):
            grad.mul_(grad_rows.to(grad.dtype)[:, None])
        return grad, None, None, None


def chunked_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
    """Per-position weighted losses ``[N]`` with the chunked implementation."""
    rows: Tensor = PrecomputedGradKD.apply(logits, prepared, params, _chunked_compute)
    return rows
