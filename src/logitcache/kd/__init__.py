"""Student-side losses and metrics for sparse knowledge distillation.

* :func:`sparse_kd_loss` — forward KL against padded sparse targets (``kl`` / ``ghost`` /
  ``naive_fix``, CE mixing, temperature, masks, weights), implementations ``reference`` /
  ``chunked`` / ``triton``;
* :func:`fused_linear_sparse_kd_loss` — the same from hidden states and the LM-head weight,
  without materialising the logits;
* :class:`SparseKDLoss`, :class:`FusedLinearSparseKDLoss` — ``nn.Module`` wrappers;
* :mod:`logitcache.kd.metrics` — ECE, top-1 agreement, LM loss.

Imports point one way: :mod:`.base` (the options, target preparation, shared helpers) is the
bottom; :mod:`.reference` and :mod:`.chunked` import it, :mod:`.triton_kernel` and
:mod:`.fused_linear` import those; :mod:`.loss` (the dispatcher) and :mod:`.modules` sit on top.
"""

import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
from logitcache.kd.base import KDParams
from logitcache.kd.fused_linear import fused_linear_sparse_kd_loss
from logitcache.kd.loss import sparse_kd_loss
from logitcache.kd.modules import FusedLinearSparseKDLoss, SparseKDLoss

__all__ = ["FusedLinearSparseKDLoss", "KDParams", "SparseKDLoss", "fused_linear_sparse_kd_loss", "sparse_kd_loss"]
