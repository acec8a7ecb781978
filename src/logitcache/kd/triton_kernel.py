"""The Triton sparse-KD kernel: one program per position, two passes over the vocabulary.

Layers, as in Liger-Kernel: the private ``@triton.jit`` kernel, a launcher (:func:`_triton_compute`)
that the shared :class:`~logitcache.kd.chunked.PrecomputedGradKD` autograd function calls, and
:func:`triton_rows` for :func:`~logitcache.kd.loss.sparse_kd_loss`.

Per program (row ``r``):

1. online logsumexp of ``z = x/τ`` over V in blocks (and of ``x`` when CE is mixed in at ``τ != 1``),
   and, in ghost mode, over the tokens outside the K entries (a membership test per block);
2. gather of the ``K`` target entries: the KL (and ghost) terms;
3. second pass: the dense part of the gradient (see :mod:`logitcache.kd.chunked` for the
   formulas), written in the gradient's dtype;
4. after a barrier, ``−t_k`` at the K entries and the label's ``−α`` added in place.

It runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` is set before Triton is
imported (the tests do that, at small shapes).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from logitcache.kd.base import GHOST_FLOOR, KDParams, PreparedTargets
from logitcache.kd.chunked import empty_grad, run_rows

__all__ = ["triton_rows"]


@triton.jit
def _sparse_kd_kernel(
    X,  # [N, V] logits
    stride_x,
    GRAD,  # [N, V] gradient out (logits' dtype, fp32 for fp16 logits)
    stride_g,
    IDS,  # [N, K] int64, -1 = padding; unique within a row
    PROBS,  # [N, K] fp32
    stride_k,
    LABELS,  # [N] int64
    ROW_W,  # [N] fp32, 0 = dropped
    LOSS,  # [N] fp32 out
    V,
    K,
    inv_t,
    ce_weight,
    ghost_floor,
    GHOST: tl.constexpr,
    HAS_CE: tl.constexpr,
    SEPARATE_CE: tl.constexpr,  # CE needs its own softmax (τ != 1)
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    w = tl.load(ROW_W + row)
    keep = w > 0

    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    ids = tl.load(IDS + row * stride_k + ks, mask=kmask, other=-1)
    valid = ids >= 0
    safe = tl.where(valid, ids, 0)

    # pass 1: online logsumexps over the vocabulary (finite start: a block of -inf stays harmless)
    m = -1e30
    d = 0.0
    m1 = -1e30
    d1 = 0.0
    mg = -1e30  # ghost: over the tokens outside the K entries
    dg = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        z = x * inv_t
        m_new = tl.maximum(m, tl.max(z, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
        if SEPARATE_CE:
            m1_new = tl.maximum(m1, tl.max(x, 0))
            d1 = d1 * tl.exp(m1 - m1_new) + tl.sum(tl.exp(x - m1_new), 0)
            m1 = m1_new
        if GHOST:
            in_k = tl.sum(((cols[:, None] == ids[None, :]) & valid[None, :]).to(tl.int32), 1) > 0
            zg = tl.where(in_k, float("-inf"), z)
            mg_new = tl.maximum(mg, tl.max(zg, 0))
            dg = dg * tl.exp(mg - mg_new) + tl.sum(tl.exp(zg - mg_new), 0)
            mg = mg_new
    lse = m + tl.log(d)
    lse1 = lse
    if SEPARATE_CE:
        lse1 = m1 + tl.log(d1)

    # the K target entries
    t = tl.load(PROBS + row * stride_k + ks, mask=kmask, other=0.0)
    t = tl.where(valid, t, 0.0)
    xk = tl.load(x_row + safe, mask=valid, other=0.0).to(tl.float32) * inv_t
    logp_k = xk - lse
    total = tl.sum(t, 0)
    tlogt = tl.sum(tl.where(t > 0, t * tl.log(tl.where(t > 0, t, 1.0)), 0.0), 0)
    kd = tlogt - tl.sum(tl.where(valid, t * logp_k, 0.0), 0)
    scale_s = total
    ghost_t = 0.0
    log_ghost_s = 0.0
    if GHOST:
        residual = 1.0 - total
        ghost_t = tl.where(residual > ghost_floor, residual, 0.0)
        log_ghost_s = mg + tl.log(dg) - lse  # log of the student's mass outside K
        kd += tl.where(ghost_t > 0, ghost_t * (tl.log(tl.where(ghost_t > 0, ghost_t, 1.0)) - log_ghost_s), 0.0)
        scale_s = total + ghost_t  # 1 while there is ghost mass; Σ t when the target sums to 1 or more
    loss = (1.0 - ce_weight) * kd
    label = tl.load(LABELS + row)
    if HAS_CE:
        x_label = tl.load(x_row + label).to(tl.float32)
        loss += ce_weight * (lse1 - x_label)
    tl.store(LOSS + row, tl.where(keep, w * loss, 0.0))

    if WRITE_GRAD:
        # pass 2: the dense part of the gradient
        g_row = GRAD + row * stride_g
        kd_scale = tl.where(keep, w * (1.0 - ce_weight) * inv_t, 0.0)
        ce_scale = tl.where(keep, w * ce_weight, 0.0)
        coef = kd_scale * scale_s
        if HAS_CE and not SEPARATE_CE:
            coef += ce_scale
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(x_row + cols, mask=cols < V, other=0.0).to(tl.float32)
            z = x * inv_t
            g = coef * tl.exp(z - lse)
            if GHOST:
                in_k = tl.sum(((cols[:, None] == ids[None, :]) & valid[None, :]).to(tl.int32), 1) > 0
                q = tl.where(in_k, 0.0, tl.exp(z - lse - log_ghost_s))
                g -= kd_scale * ghost_t * q
            if SEPARATE_CE:
                g += ce_scale * tl.exp(x - lse1)
            g = tl.where(keep, g, 0.0)
            tl.store(g_row + cols, g.to(GRAD.dtype.element_ty), mask=cols < V)
        tl.debug_barrier()
        # the sparse part: -t at the K entries (ids are unique within a row: no two lanes collide)
        g_k = tl.load(g_row + safe, mask=valid, other=0.0).to(tl.float32)
        tl.store(g_row + safe, (g_k - kd_scale * t).to(GRAD.dtype.element_ty), mask=valid)
        if HAS_CE:
            tl.debug_barrier()
            g_label = tl.load(g_row + label).to(tl.float32)
            tl.store(g_row + label, (g_label - ce_scale).to(GRAD.dtype.element_ty))


def _triton_compute(
    logits: Tensor, prepared: PreparedTargets, params: KDParams, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n, vocab = logits.shape
    logits = logits.contiguous()
    ids = prepared.ids.contiguous()
    probs = prepared.probs.contiguous()
    k = ids.shape[1]
    rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = empty_grad(logits) if need_grad else None
    if n == 0:
        return rows, grad
    has_ce = params.ce_weight > 0
    _sparse_kd_kernel[(n,)](
        logits,
        logits.stride(0),
        grad if grad is not None else logits,
        grad.stride(0) if grad is not None else 0,
        ids,
        probs,
        max(1, ids.stride(0)),
        prepared.labels.contiguous(),
        prepared.row_weight.contiguous(),
        rows,
        vocab,
        k,
        1.0 / params.temperature,
        params.ce_weight,
        GHOST_FLOOR,
        GHOST=params.ghost,
        HAS_CE=has_ce,
        SEPARATE_CE=has_ce and params.temperature != 1.0,
        WRITE_GRAD=grad is not None,
        BLOCK_V=min(1024 if params.ghost else 4096, triton.next_power_of_2(vocab)),
        BLOCK_K=max(2, triton.next_power_of_2(k)),
    )
    return rows, grad


def triton_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
    """Per-position weighted losses ``[N]`` with the Triton kernel."""
    if not (logits.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ValueError(
            f"impl: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter), got {logits.device}"
        )
    return run_rows(logits, prepared, params, _triton_compute)
