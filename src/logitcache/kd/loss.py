"""The sparse-KD loss: forward KL from a sparse teacher target to the student's softmax.

For a position with student logits ``x [V]``, student temperature ``τ`` (``s = softmax(x/τ)``)
and a sparse target of ``K`` entries ``(id_k, t_k)``:

    KL   = Σ_k t_k (log t_k − log s_{id_k})                    (the true KL: a perfect student reads 0)
    ∂/∂z = (Σ_k t_k)·s − scatter(t)           with z = x/τ     (paper A.1, eq. 2)

so only a logsumexp over the vocabulary and a gather of ``K`` entries are needed: no dense
``[N, V]`` target is ever built. The options below are the fields of
:class:`~logitcache.kd.base.KDParams`, passed as ``params=KDParams(mode="ghost", ...)``.

Modes (``mode``):

* ``"kl"``: the target as given. Random-sampling targets sum to 1; plain top-k targets sum to
  less, which is exactly the up-scaling bias the paper describes (eq. 2).
* ``"ghost"`` (paper §3.2, A.5): a ghost token carries the residual mass on both sides,
  ``t_g = 1 − Σ t`` and ``s_g = 1 − Σ_k s_{id_k}``; the loss gains ``t_g (log t_g − log s_g)``.
  The top-k tokens then get the full-KD gradient ``s_i − t_i``; every other token gets
  ``s_j (1 − t_g / s_g)``. A target summing to 1 or more (allowed up to ``1 + mass_tolerance``)
  has no ghost mass: its loss and gradient are the ``"kl"`` ones, ``(Σ t)·s − t``.
* ``"naive_fix"`` (paper §3.3): the residual mass ``1 − Σ t`` is added to the label token's
  target (a new entry if the label is not among the ids), then ``"kl"``. Needs ``labels``.

``ce_weight`` α mixes in cross-entropy on ``labels`` (at temperature 1) in the same pass:
``loss = α·CE + (1 − α)·KD``. No ``τ²`` factor is applied; multiply it in if you want Hinton's.

Positions are dropped (zero loss, zero gradient, not counted by ``"mean"``; whatever their
logits hold) when ``mask`` is False, when ``labels == ignore_index``, or, with ``ce_weight == 0``,
when the row has no entries (in ``"naive_fix"`` mode an empty row is a one-hot target on its
label, so it is kept). Ids must be unique within a row (records guarantee it).

Sampled targets with a tempered proposal (``t != 1``, weights ``w = p/q``) come in two forms
(:meth:`~logitcache.targets.sparse.SparseTargets.target_probs`, ``SparseKDLoader(normalize=...)``):

* normalised, ``count·w / Σ count·w`` (the default, and the paper's §3.4 target): every row sums to 1,
  so the loss is a true KL and every mode applies, but the ratio makes it biased by O(1/N) — at
  ``N = 4``, ``t = 0.8`` several standard errors of the sampler's own noise on the head tokens
  (``tests/training/test_loader.py``), shrinking as ``1/N``;
* unbiased, ``count·w / N`` (``normalize=False``, with ``normalized_targets=False`` here):
  ``E[t] = p`` exactly, so the gradient is unbiased, but a row sums to 1 only in expectation (a few
  percent off at N ≈ 12), the per-row loss is no longer a KL (it can be negative) and only ``"kl"``
  mode applies. This option skips the row-sum check (``mass_tolerance``).

At ``t = 1`` (``w = 1``) both are ``count / N``: identical, unbiased and summing to 1.

In ``"ghost"`` mode a residual ``1 − Σ t`` of at most ``GHOST_FLOOR`` (1e-6) is read as rounding,
not ghost mass: random-sampling targets then give exactly the ``"kl"`` loss.
``weights`` (``[N]``, ≥ 0) scale positions; ``"mean"`` is the weighted mean ``Σ w·L / Σ w``
over kept positions (0 when none is kept), ``"sum"`` is ``Σ w·L``, ``"none"`` gives ``w·L`` per
position.

Implementations (``impl``), all computing the same thing:

* ``"reference"``: dense torch autograd, for tests (builds ``[N, V]`` tensors);
* ``"chunked"`` (default on CPU): an ``autograd.Function`` that walks positions in chunks and
  writes the gradient during the forward pass, so the extra memory is one ``[N, V]`` gradient in
  the logits' dtype plus ``O(chunk × V)`` fp32 scratch;
* ``"triton"`` (default on CUDA): one fused kernel per row (online logsumexp over V, gather of
  the K entries, gradient written in one more pass). Runs on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from torch import Tensor

from logitcache.kd.base import KDParams, check_logits, prepare_targets, resolve_params
from logitcache.kd.chunked import chunked_rows
from logitcache.kd.reference import reference_rows

__all__ = ["sparse_kd_loss"]


def sparse_kd_loss(
    logits: Tensor,  # [N, V]
    target_ids: Tensor,  # [N, K], -1 = padding
    target_probs: Tensor,  # [N, K], 0 at padding
    *,
    labels: Tensor | None = None,  # [N]
    mask: Tensor | None = None,  # [N] bool, True = keep
    weights: Tensor | None = None,  # [N] per-position weights
    params: KDParams | None = None,  # the options (mode, ce_weight, ..., impl); None = the defaults
) -> Tensor:
    """Sparse-KD loss of student ``logits`` against padded sparse targets (see the module docstring),
    with the options of :class:`~logitcache.kd.base.KDParams`.

    Returns a scalar (``"mean"``, ``"sum"``) or ``[N]`` (``"none"``) float32 tensor; gradients flow
    to ``logits`` only. ``impl="auto"`` picks ``"triton"`` on CUDA and ``"chunked"`` elsewhere.
    """
    params = resolve_params(params)
    check_logits(logits, "logits")
    shape = (logits.shape[0], logits.shape[1])
    prepared = prepare_targets(shape, logits.device, target_ids, target_probs, params, labels, mask, weights)
    impl = params.impl
    if impl == "auto":
        impl = "triton" if logits.is_cuda else "chunked"
    if impl == "reference":
        rows = reference_rows(logits, prepared, params)
    elif impl == "chunked":
        rows = chunked_rows(logits, prepared, params)
    else:
        from logitcache.kd.triton_kernel import triton_rows  # triton is an optional extra

        rows = triton_rows(logits, prepared, params)
    return rows if params.reduction == "none" else rows.sum()
