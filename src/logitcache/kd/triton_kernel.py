"""The Triton sparse-KD kernel: one program per position, two passes over the vocabulary.

Layers, as in Liger-Kernel: the private ``@triton.jit`` kernel, a launcher (:func:`_triton_compute`)
that the shared :class:`~logitcache.kd.chunked.PrecomputedGradKD` autograd function calls, and
:func:`triton_rows` for :func:`~logitcache.kd.loss.sparse_kd_loss`.

Per program (row ``r``):

1. online logsumexp of ``z = x/τ`` over V in blocks (and of ``x`` when CE is mixed in at ``τ != 1``);
2. gather of the ``K`` target entries: the KL (and ghost) terms, the row coefficient ``a``;
3. second pass: ``grad = w·((1 − α)/τ·a·s_τ + α·s_1)`` written in the logits' dtype;
4. after a barrier, the ``K`` entry corrections ``c_k`` and the label's ``−α`` added in place.

It runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` is set before Triton is
imported (the tests do that, at small shapes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from logitcache.kd.chunked import PrecomputedGradKD
from logitcache.kd.loss import KDParams, PreparedTargets

__all__ = ["triton_rows"]


@triton.jit
def _sparse_kd_kernel(
    X,  # [N, V] logits
    stride_x,
    GRAD,  # [N, V] gradient out (logits' dtype)
    stride_g,
    IDS,  # [N, K] int64, -1 = padding
    PROBS,  # [N, K] fp32
    stride_k,
    LABELS,  # [N] int64
    ROW_W,  # [N] fp32
    LOSS,  # [N] fp32 out
    V,
    K,
    inv_t,
    ce_weight,
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

    # pass 1: online logsumexp over the vocabulary
    m = float("-inf")
    d = 0.0
    m1 = float("-inf")
    d1 = 0.0
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
    lse = m + tl.log(d)
    lse1 = lse
    if SEPARATE_CE:
        lse1 = m1 + tl.log(d1)

    # the K target entries
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    ids = tl.load(IDS + row * stride_k + ks, mask=kmask, other=-1)
    valid = ids >= 0
    safe = tl.where(valid, ids, 0)
    t = tl.load(PROBS + row * stride_k + ks, mask=kmask, other=0.0)
    t = tl.where(valid, t, 0.0)
    xk = tl.load(x_row + safe, mask=valid, other=0.0).to(tl.float32) * inv_t
    logp_k = xk - lse
    s_k = tl.where(valid, tl.exp(logp_k), 0.0)
    total = tl.sum(t, 0)
    tlogt = tl.sum(tl.where(t > 0, t * tl.log(tl.where(t > 0, t, 1.0)), 0.0), 0)
    kd = tlogt - tl.sum(tl.where(valid, t * logp_k, 0.0), 0)
    a = total
    if GHOST:
        student_mass = tl.sum(s_k, 0)
        ghost_t = tl.maximum(1.0 - total, 0.0)
        ghost_s = tl.maximum(1.0 - student_mass, 1.1754943508222875e-38)
        ghost_log_t = tl.log(tl.where(ghost_t > 0, ghost_t, 1.0))
        kd += ghost_t * ghost_log_t - ghost_t * tl.log(ghost_s)
        a = total - ghost_t * student_mass / ghost_s
    loss = (1.0 - ce_weight) * kd
    label = tl.load(LABELS + row)
    if HAS_CE:
        x_label = tl.load(x_row + label).to(tl.float32)
        loss += ce_weight * (lse1 - x_label)
    tl.store(LOSS + row, w * loss)

    if WRITE_GRAD:
        # pass 2: the dense part of the gradient
        g_row = GRAD + row * stride_g
        kd_scale = w * (1.0 - ce_weight) * inv_t
        coef = kd_scale * a
        if HAS_CE and not SEPARATE_CE:
            coef += w * ce_weight
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(x_row + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = coef * tl.exp(x * inv_t - lse)
            if SEPARATE_CE:
                g += w * ce_weight * tl.exp(x - lse1)
            tl.store(g_row + cols, g.to(GRAD.dtype.element_ty), mask=cols < V)
        tl.debug_barrier()
        # the sparse part: corrections at the K entries (ids are unique within a row)
        correction = -t
        if GHOST:
            correction += s_k * (1.0 - a)
        g_k = tl.load(g_row + safe, mask=valid, other=0.0).to(tl.float32)
        tl.store(g_row + safe, (g_k + kd_scale * correction).to(GRAD.dtype.element_ty), mask=valid)
        if HAS_CE:
            tl.debug_barrier()
            g_label = tl.load(g_row + label).to(tl.float32)
            tl.store(g_row + label, (g_label - w * ce_weight).to(GRAD.dtype.element_ty))


def _triton_compute(
    logits: Tensor, prepared: PreparedTargets, params: KDParams, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    n, vocab = logits.shape
    logits = logits.contiguous()
    ids = prepared.ids.contiguous()
    probs = prepared.probs.contiguous()
    k = ids.shape[1]
    rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if need_grad else None
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
        GHOST=params.ghost,
        HAS_CE=has_ce,
        SEPARATE_CE=has_ce and params.temperature != 1.0,
        WRITE_GRAD=grad is not None,
        BLOCK_V=min(4096, triton.next_power_of_2(vocab)),
        BLOCK_K=max(2, triton.next_power_of_2(k)),
    )
    return rows, grad


def triton_rows(logits: Tensor, prepared: PreparedTargets, params: KDParams) -> Tensor:
    """Per-position weighted losses ``[N]`` with the Triton kernel."""
    rows: Tensor = PrecomputedGradKD.apply(logits, prepared, params, _triton_compute)
    return rows
