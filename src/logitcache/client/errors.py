"""Typed client errors: one exception class per gRPC status code the server answers with."""

from __future__ import annotations

import contextlib

import grpc

__all__ = [
    "AlreadyExistsError",
    "CacheError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
    "is_transient",
]


class CacheError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``details`` the server's message.

    ``retry_after`` (seconds) is the server's pushback (gRPC's ``grpc-retry-pushback-ms``
    trailer): set when the same call may succeed later (a busy server, a disk being freed).
    """

    def __init__(self, code: grpc.StatusCode, details: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[CacheError], tuple[grpc.StatusCode, str, float | None]]:
        """Pickled from its fields (``args`` holds only the message): an error raised in a worker process
        or a Ray actor reaches the caller as itself."""
        return type(self), (self.code, self.details, self.retry_after)


class InvalidArgumentError(CacheError, ValueError):
    """A malformed record or request (the message names the field)."""


class NotFoundError(CacheError, KeyError):
    """Unknown shard or seq."""

    def __str__(self) -> str:  # KeyError would quote the message
        return f"{self.code.name}: {self.details}"


class AlreadyExistsError(CacheError):
    """The shard exists, or the seq is stored with different bytes (write with overwrite to replace)."""


class FailedPreconditionError(CacheError):
    """The shard is sealed, or the record disagrees with the shard's manifest."""


class UnauthenticatedError(CacheError):
    """A mutating call without the server's auth token."""


class ResourceExhaustedError(CacheError):
    """A bound of the server: a message over the size limit, a shard at its size limit (permanent);
    too many calls, too many bytes waiting for commit, a full disk (``retry_after`` set: retry)."""


class DataLossError(CacheError):
    """A stored record failed its checksum, or the shard's files are damaged."""


class UnavailableError(CacheError):
    """The server cannot be reached (retry later)."""


class DeadlineExceededError(CacheError, TimeoutError):
    """The call did not finish within its deadline."""


class CancelledError(CacheError):
    """The call was cancelled (by this side, or by the server shutting down)."""


_BY_CODE: dict[grpc.StatusCode, type[CacheError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> CacheError:
    """The typed exception for a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    retry_after = None
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-retry-pushback-ms":
            with contextlib.suppress(ValueError):
                retry_after = max(0, int(value)) / 1000
    return _BY_CODE.get(code, CacheError)(code, details or "", retry_after)


def is_transient(error: CacheError) -> bool:
    """Whether the same call may succeed later: UNAVAILABLE, DEADLINE_EXCEEDED, or the server's pushback."""
    return isinstance(error, (UnavailableError, DeadlineExceededError)) or error.retry_after is not None
