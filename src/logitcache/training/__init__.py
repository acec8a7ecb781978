"""The training side (torch): :class:`SparseKDLoader`, batches of cached targets aligned with their tokens."""

import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
from logitcache.training.loader import (
    AlignmentError,
    LoaderStateError,
    ShardSetError,
    SparseKDBatch,
    SparseKDLoader,
    plan_batches,
    verify_alignment,
)

__all__ = [
    "AlignmentError",
    "LoaderStateError",
    "ShardSetError",
    "SparseKDBatch",
    "SparseKDLoader",
    "plan_batches",
    "verify_alignment",
]
