"""The server's typed errors. Each carries the gRPC status name the service answers with.

``retry_after`` marks a condition that passes by itself (a busy server, a full disk being freed):
the service sends it as gRPC's ``grpc-retry-pushback-ms`` trailer, and clients retry such a
``RESOURCE_EXHAUSTED`` after that delay. Without it the error is permanent for that request.
This module imports neither gRPC nor LMDB.
"""

from __future__ import annotations

__all__ = [
    "CorruptRecordError",
    "DiskFullError",
    "InvalidRequestError",
    "ManifestError",
    "RecordConflictError",
    "ResponseTooLargeError",
    "SeqNotFoundError",
    "ServerBusyError",
    "ShardDamagedError",
    "ShardExistsError",
    "ShardNotFoundError",
    "ShardSealedError",
    "StoreError",
    "StoreFullError",
]


class StoreError(Exception):
    """Base class. ``code`` is the gRPC status name; ``retry_after`` seconds, if the condition passes."""

    code = "INTERNAL"
    retry_after: float | None = None


class InvalidRequestError(StoreError):
    """The request itself is malformed (a bad record, seq, range, manifest)."""

    code = "INVALID_ARGUMENT"


class ShardNotFoundError(StoreError):
    code = "NOT_FOUND"


class SeqNotFoundError(StoreError):
    code = "NOT_FOUND"


class ShardExistsError(StoreError):
    code = "ALREADY_EXISTS"


class RecordConflictError(StoreError):
    """The seq is stored with different bytes (write with overwrite to replace it)."""

    code = "ALREADY_EXISTS"


class ShardSealedError(StoreError):
    code = "FAILED_PRECONDITION"


class ManifestError(StoreError):
    """A record, or an existing shard, disagrees with the manifest."""

    code = "FAILED_PRECONDITION"


class StoreFullError(StoreError):
    """The shard's map is at ``--max-shard-bytes``: permanent for this shard."""

    code = "RESOURCE_EXHAUSTED"


class DiskFullError(StoreError):
    """The data directory's file system is (nearly) full; writes resume once space is freed."""

    code = "RESOURCE_EXHAUSTED"
    retry_after = 5.0


class ResponseTooLargeError(StoreError):
    """A stored record is larger than one response message may be: read it by windows."""

    code = "RESOURCE_EXHAUSTED"


class ServerBusyError(StoreError):
    """A bound of the server (concurrent calls, bytes waiting for commit) is reached; retry later."""

    code = "RESOURCE_EXHAUSTED"
    retry_after = 1.0


class CorruptRecordError(StoreError):
    """A stored record fails its checksum: that record is lost (overwrite it to repair)."""

    code = "DATA_LOSS"


class ShardDamagedError(StoreError):
    """The shard's files are damaged: intact records are served by seq, everything else refused."""

    code = "DATA_LOSS"
