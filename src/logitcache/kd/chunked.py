"""The chunked sparse-KD implementation (pure torch, any device) and the autograd glue it shares.

:func:`kd_chunk` computes, for a block of positions, the per-position loss and the gradient with
respect to the logits in closed form (see :mod:`logitcache.kd.loss`), with ``z = x/τ``,
``s = softmax(z)`` and ``w`` the position's weight:

    kl, naive_fix:  ∂L/∂x = w · [ (1 − α)/τ · ((Σ t)·s − t) + α·(s_1 − e_label) ]
    ghost:          ∂L/∂x = w · [ (1 − α)/τ · ((Σ t + t_g)·s − t − t_g·q) + α·(s_1 − e_label) ]

where ``q`` is the student's softmax restricted to the tokens outside the K entries
(``q_j = s_j / s_g``, zero on the entries) and ``t_g = max(0, 1 − Σ t)``: ``Σ t + t_g`` is 1
while there is ghost mass and ``Σ t`` for a target that sums to 1 or more (within
``mass_tolerance``), where the ghost term vanishes and the gradient is the ``kl`` one. Writing the ghost gradient
with ``q`` (instead of ``s·(1 − t_g/s_g)``) and taking ``log s_g`` as a logsumexp over the
tokens outside K keeps it exact when the student is confident and ``s_g`` is tiny.

Per chunk: one ``log_softmax`` (written straight into the gradient buffer when it is fp32), an
in-place ``exp`` and scale, a scatter of ``K`` entries; ghost mode adds a masked logsumexp and
one more ``[chunk, V]`` buffer.

:class:`PrecomputedGradKD` is the ``autograd.Function`` both this and the Triton implementation
use: the forward pass computes the loss rows and the full gradient at once (fp32 for fp16
logits, whose range could not hold it before the upstream scale; the logits' dtype otherwise);
the backward pass only scales it by the incoming gradient, in place, so it runs once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from logitcache.chunks import default_chunk_size
from logitcache.kd.base import KDParams, PreparedTargets, ghost_mass

__all__ = ["PrecomputedGradKD", "chunk_positions", "chunked_rows", "empty_grad", "kd_chunk"]

Compute = Callable[[Tensor, PreparedTargets, KDParams, bool], tuple[Tensor, Tensor | None]]


def chunk_positions(params: KDParams, vocab_size: int) -> int:
    """Positions per :func:`kd_chunk` call: ``params.chunk_size``, else the shared budget split over
    the four fp32 ``[chunk, V]`` buffers a chunk can hold, at most 4096 (see :mod:`logitcache.chunks`)."""
    return params.chunk_size or default_chunk_size(vocab_size, buffers=4, max_positions=4096)


def empty_grad(logits: Tensor) -> Tensor:
    """An uninitialised buffer for ``∂L/∂logits``: fp32 for fp16 logits (range), else their own dtype."""
    dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
    return torch.empty(logits.shape, dtype=dtype, device=logits.device)


def kd_chunk(
    logits: Tensor,  # [c, V] fp32 / bf16 / fp16
    targets: PreparedTargets,  # the chunk's c positions (PreparedTargets.rows)
    params: KDParams,
    grad_out: Tensor | None,  # [c, V] from empty_grad(logits), or None for the loss only
) -> Tensor:
    """Loss per position ``[c]`` (already times ``row_weight``); writes ``∂L/∂logits`` into ``grad_out``."""
    ids, probs, labels, row_weight = targets.ids, targets.probs, targets.labels, targets.row_weight
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
    q = None
    ghost_t = None
    if params.ghost:
        ghost_t = ghost_mass(total)
        k_count = torch.zeros(logp.shape, dtype=torch.uint8, device=logp.device)
        in_k = k_count.scatter_add_(1, safe, valid.to(torch.uint8)) > 0
        log_ghost_s = torch.logsumexp(logp.masked_fill(in_k, float("-inf")), dim=1)  # log Σ_{j∉K} s_j
        kd = kd + torch.xlogy(ghost_t, ghost_t) - torch.where(ghost_t > 0, ghost_t * log_ghost_s, 0.0)
        if grad_out is not None:
            q = (logp - log_ghost_s[:, None]).exp_().masked_fill_(in_k, 0.0)
        scale_s = total + ghost_t  # 1 while there is ghost mass; Σ t when the target sums to 1 or more
    else:
        scale_s = total
    loss = (1.0 - alpha) * kd
    logp_ce = logp if inv_t == 1.0 else None
    if alpha > 0:
        if logp_ce is None:
            logp_ce = torch.log_softmax(logits.float(), dim=-1)
        loss = loss + alpha * -logp_ce.gather(1, labels[:, None]).squeeze(1)
    keep = row_weight > 0
    rows = torch.where(keep, row_weight * loss, 0.0)  # a dropped row never leaks inf or NaN
    if grad_out is None:
        return rows
    kd_scale = row_weight * ((1.0 - alpha) * inv_t)  # [c]
    coef = kd_scale * scale_s
    if alpha > 0 and logp_ce is logp:
        coef = coef + row_weight * alpha  # s_τ = s_1: both terms scale the same softmax
    grad = logp.exp_().mul_(coef[:, None])
    if q is not None and ghost_t is not None:
        grad.sub_(q.mul_((kd_scale * ghost_t)[:, None]))
    if alpha > 0 and logp_ce is not logp and logp_ce is not None:
        grad.add_(logp_ce.exp_().mul_((row_weight * alpha)[:, None]))
    grad.scatter_add_(1, safe, torch.where(valid, -probs * kd_scale[:, None], 0.0))
    if alpha > 0:
        grad.scatter_add_(1, labels[:, None], -(row_weight * alpha)[:, None])
    if not bool(keep.all()):
        grad.masked_fill_(~keep[:, None], 0.0)
    if grad is not grad_out:
        grad_out.copy_(grad)
    return rows


def _chunked_compute(
    logits: Tensor, prepared: PreparedTargets, params: KDParams, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n, vocab = logits.shape
    grad = empty_grad(logits) if need_grad else None
    rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    step = chunk_positions(params, vocab)
    for start in range(0, n, step):
        end = min(n, start + step)
        rows[start:end] = kd_chunk(
            logits[start:end], prepared.rows(start, end), params, None if grad is None else grad[start:end]
        )
    return rows, grad


class PrecomputedGradKD(torch.autograd.Function):
    """Loss rows whose gradient is computed in the forward pass by ``compute``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, prepared: PreparedTargets, params: KDParams, compute: Compute) -> Tensor:
        rows, grad = compute(logits.detach(), prepared, params, True)
        ctx.grad = grad
        ctx.dtype = logits.dtype
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor | None, None, None, None]:
        grad: Tensor | None = ctx.grad
        if grad is None:
            raise RuntimeError("sparse_kd_loss: backward ran twice; the gradient buffer is consumed")
        ctx.grad = None
        if not bool((grad_rows == 1).all()):
            grad.mul_(grad_rows[:, None])  # computed in fp32, stored back in the buffer's dtype
        return grad.to(ctx.dtype), None, None, None


def run_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams, compute: Compute) -> Tensor:
    """Through autograd when a gradient is wanted; a plain loss-only pass otherwise."""
    if torch.is_grad_enabled() and logits.requires_grad:
        rows: Tensor = PrecomputedGradKD.apply(logits, prepared, params, compute)
        return rows
    return compute(logits.detach(), prepared, params, False)[0]


def chunked_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
    """Per-position weighted losses ``[N]`` with the chunked implementation."""
    return run_rows(logits, prepared, params, _chunked_compute)
