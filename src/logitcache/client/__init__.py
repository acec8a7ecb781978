"""Talking to cache servers from Python: :class:`CacheClient`, its typed errors, and the training loader."""

from logitcache.client.errors import (
    AlreadyExistsError,
    CacheError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from logitcache.client.grpc_client import CacheClient, ShardInfo, WriteSummary
from logitcache.client.loader import (
    AlignmentError,
    LoaderStateError,
    SparseKDBatch,
    SparseKDLoader,
    plan_batches,
    verify_alignment,
)

__all__ = [
    "AlignmentError",
    "AlreadyExistsError",
    "CacheClient",
    "CacheError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "LoaderStateError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ShardInfo",
    "SparseKDBatch",
    "SparseKDLoader",
    "UnauthenticatedError",
    "UnavailableError",
    "WriteSummary",
    "plan_batches",
    "verify_alignment",
]
