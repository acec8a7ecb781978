"""Talking to cache servers from Python: :class:`CacheClient` and its typed errors. Imports no torch.

The training loader built on it is :mod:`logitcache.training`.
"""

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
from logitcache.client.grpc_client import BatchAck, CacheClient, ShardInfo, StatsSnapshot, WriteStream, WriteSummary

__all__ = [
    "AlreadyExistsError",
    "BatchAck",
    "CacheClient",
    "CacheError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ShardInfo",
    "StatsSnapshot",
    "UnauthenticatedError",
    "UnavailableError",
    "WriteStream",
    "WriteSummary",
]
