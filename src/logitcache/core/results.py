"""What the client's calls answer, as the project's own types (no protobuf).

:class:`BatchAck` is one ``Write`` batch's acknowledgement, :class:`WriteSummary` a whole write's,
:class:`StatsSnapshot` one server's counters. :mod:`logitcache.wire` converts the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchAck", "StatsSnapshot", "WriteSummary"]


@dataclass(frozen=True)
class WriteSummary:
    """What a whole :meth:`~logitcache.client.CacheClient.write` stored."""

    batches: int
    written: int
    unchanged: int
    positions: int


@dataclass(frozen=True)
class BatchAck:
    """One batch of a ``Write`` stream, durably committed."""

    batch_id: int  # the batch's index in its stream
    shard: int
    written: int  # records stored by this batch
    unchanged: int  # records already stored with identical bytes (resends, reruns)
    positions: int  # positions in the batch's records


@dataclass(frozen=True)
class StatsSnapshot:
    """One server's counters since it started."""

    records_written: int
    positions_written: int
    bytes_written: int
    records_read: int
    positions_read: int
    bytes_read: int
    shards: int
    uptime_seconds: float
    errors_by_code: dict[str, int]  # calls that failed, by gRPC status code name
