"""Talking to cache servers from Python: :class:`CacheClient` and its typed errors."""

from logitcache.client.errors import (
    AlreadyExistsError,
    CacheError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from logitcache.client.grpc_client import CacheClient, ShardInfo, WriteSummary

__all__ = [
    "AlreadyExistsError",
    "CacheClient",
    "CacheError",
    "DataLossError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ShardInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "WriteSummary",
]
