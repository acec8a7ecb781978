"""The sparse-KD loss from hidden states and the LM-head weight, without the full logits.

``logits = hidden @ weight.T`` is ``[N, V]``: at V = 128k and N = 16k positions that is 8 GiB in
fp32, more than the model. As Liger-Kernel and Cut Cross-Entropy do for cross-entropy, this
computes the loss chunk by chunk of positions: for each chunk it forms the ``[c, V]`` logits,
gets the loss rows and ``∂L/∂logits`` from :func:`~logitcache.kd.chunked.kd_chunk`, and turns
them at once into ``∂L/∂hidden = g @ weight`` and ``∂L/∂weight += gᵀ @ hidden``. Peak extra
memory is one chunk of logits and gradient plus the parameter-sized gradients.

The backward pass only scales the stored gradients by the incoming scalar, so the result must
be reduced (``"mean"`` or ``"sum"``); ``"none"`` is refused. ``grad_weight`` is accumulated in
fp32 (a ``[V, H]`` fp32 buffer until backward); with fp16 inputs the matmuls of the gradient run
in fp32 against an fp32 copy of the weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from logitcache.kd.base import KDParams, PreparedTargets, check_logits, prepare_targets, resolve_params
from logitcache.kd.chunked import chunk_positions, empty_grad, kd_chunk

__all__ = ["check_fused_params", "fused_linear_sparse_kd_loss"]


def _fused_compute(
    hidden: Tensor, weight: Tensor, prepared: PreparedTargets, params: KDParams, need_hidden: bool, need_weight: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss (sum of the weighted rows) and, if asked, the gradients for ``hidden`` and ``weight``."""
    n = hidden.shape[0]
    vocab = weight.shape[0]
    need_grad = need_hidden or need_weight
    # fp16: keep the logits' gradient and the matmuls in fp32 (fp16's range cannot hold them)
    wide = hidden.dtype == torch.float16 and need_grad
    weight_g = weight.float() if wide else weight
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    step = chunk_positions(params, vocab)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_chunk: Tensor | None = None
    for start in range(0, n, step):
        end = min(n, start + step)
        h = hidden[start:end]
        logits = h @ weight.T  # [c, V]
        if need_grad and (grad_chunk is None or grad_chunk.shape[0] != end - start):
            grad_chunk = empty_grad(logits)
        rows = kd_chunk(logits, prepared.rows(start, end), params, grad_chunk if need_grad else None)
        total += rows.sum()
        del logits
        if grad_chunk is not None:
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_chunk @ weight_g
            if grad_weight is not None:
                grad_weight.addmm_(grad_chunk.T.float(), h.float())
    return total, grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype)


class _FusedLinearSparseKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
        total, grad_hidden, grad_weight = _fused_compute(
            hidden.detach(), weight.detach(), prepared, params, hidden.requires_grad, weight.requires_grad
        )
        ctx.grads = (grad_hidden, grad_weight)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        if ctx.grads is None:
            raise RuntimeError("fused_linear_sparse_kd_loss: backward ran twice; the gradients are consumed")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if not bool(grad_total == 1):
            for grad in (grad_hidden, grad_weight):
                if grad is not None:
                    grad.mul_(grad_total)
        return grad_hidden, grad_weight, None, None


def check_fused_params(params: KDParams) -> None:
    """What the fused-linear loss adds to :class:`~logitcache.kd.base.KDParams`'s own checks: a
    reduced loss (its backward only scales the stored gradients) and its one implementation."""
    if params.reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum' for the fused-linear loss, got {params.reduction!r}")
    if params.impl not in ("auto", "chunked"):
        raise ValueError(
            f"impl: expected 'auto' or 'chunked' for the fused-linear loss (it has one), got {params.impl!r}"
        )


def fused_linear_sparse_kd_loss(
    hidden: Tensor,  # [N, H]
    weight: Tensor,  # [V, H] (the LM head, no bias)
    target_ids: Tensor,  # [N, K], -1 = padding
    target_probs: Tensor,  # [N, K]
    *,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    params: KDParams | None = None,  # the options; None = the defaults
) -> Tensor:
    """:func:`~logitcache.kd.loss.sparse_kd_loss` of ``hidden @ weight.T``, chunked over positions,
    with the options of :class:`~logitcache.kd.base.KDParams`.

    Gradients flow to ``hidden`` and ``weight``. ``reduction`` is ``"mean"`` or ``"sum"``.
    """
    params = resolve_params(params)
    check_fused_params(params)
    check_logits(hidden, "hidden")
    check_logits(weight, "weight")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight: expected shape [V, H={hidden.shape[1]}], got {list(weight.shape)}")
    if weight.device != hidden.device or weight.dtype != hidden.dtype:
        raise ValueError(
            f"weight: expected {hidden.dtype} on {hidden.device} (as hidden), got {weight.dtype} on {weight.device}"
        )
    shape = (hidden.shape[0], weight.shape[0])
    prepared = prepare_targets(shape, hidden.device, target_ids, target_probs, params, labels, mask, weights)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss: Tensor = _FusedLinearSparseKD.apply(hidden, weight, prepared, params)
        return loss
    return _fused_compute(hidden.detach(), weight.detach(), prepared, params, False, False)[0]
