"""A thin synchronous client for the cache server (create / list / seal shards, write, read).

Example::

    with CacheClient("127.0.0.1:50051") as client:
        client.create_shard(0, ShardManifest(vocab_size=128256, method="sampled", rounds=50))
        summary = client.write(0, [(seq, record_bytes), ...])     # returns once all are acked
        for seq, data in client.read(0, seqs=[3, 1, 2]):          # in request order
            record = records.decode(data)

Every failure is raised as a :class:`~logitcache.client.errors.CacheError` subclass (out-of-range
numbers too, as ``InvalidArgumentError``). ``timeout`` bounds each unary call; ``stream_timeout``
bounds a whole ``Write`` or ``Read`` stream (none by default: a long stream is normal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from logitcache import wire
from logitcache.client.errors import InvalidArgumentError, from_rpc_error
from logitcache.manifest import ShardInfo, ShardManifest
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["CacheClient", "ShardInfo", "WriteSummary"]


@dataclass(frozen=True)
class WriteSummary:
    batches: int
    written: int
    unchanged: int
    positions: int


class CacheClient:
    """Synchronous client for one server. Thread-safe (gRPC channels are)."""

    def __init__(
        self,
        address: str,
        *,
        auth_token: str | None = None,
        tls_root_cert: Path | bytes | None = None,
        timeout: float | None = 60.0,
        stream_timeout: float | None = None,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_root_cert is not None:
            root = tls_root_cert.read_bytes() if isinstance(tls_root_cert, Path) else tls_root_cert
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.LogitCacheStub(self._channel)
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.address = address
        self.timeout = timeout  # deadline of each unary call, seconds
        self.stream_timeout = stream_timeout  # deadline of a whole Write or Read stream (None: none)

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    @staticmethod
    def _build(factory: Any, **fields: Any) -> Any:
        """A request message; out-of-range numbers become an INVALID_ARGUMENT error here, not a ValueError."""
        try:
            return factory(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"request: {exc}") from None

    # ----------------------------------------------------------------- shards

    def create_shard(self, shard: int, manifest: ShardManifest, *, exist_ok: bool = False) -> ShardInfo:
        request = self._build(
            pb.CreateShardRequest, shard=shard, manifest=wire.manifest_to_proto(manifest), exist_ok=exist_ok
        )
        return wire.shard_info_from_proto(self._call(self._stub.CreateShard, request))

    def get_shard(self, shard: int) -> ShardInfo:
        return wire.shard_info_from_proto(self._call(self._stub.GetShard, self._build(pb.GetShardRequest, shard=shard)))

    def list_shards(self) -> list[ShardInfo]:
        response = self._call(self._stub.ListShards, pb.ListShardsRequest())
        return [wire.shard_info_from_proto(s) for s in response.shards]

    def seal_shard(self, shard: int) -> ShardInfo:
        return wire.shard_info_from_proto(
            self._call(self._stub.SealShard, self._build(pb.SealShardRequest, shard=shard))
        )

    def stats(self) -> pb.StatsResponse:
        response: pb.StatsResponse = self._call(self._stub.GetStats, pb.StatsRequest())
        return response

    # ----------------------------------------------------------------- data

    def write(
        self,
        shard: int,
        items: Iterable[tuple[int, bytes]],
        *,
        batch_records: int = 16,
        overwrite: bool = False,
    ) -> WriteSummary:
        """Stream ``(seq, record)`` pairs in batches; return once every batch is durably acknowledged."""
        batches = 0
        written = unchanged = positions = 0
        for ack in self.write_batches(shard, _batched(items, batch_records), overwrite=overwrite):
            batches += 1
            written += ack.written
            unchanged += ack.unchanged
            positions += ack.positions
        return WriteSummary(batches, written, unchanged, positions)

    def write_batches(
        self, shard: int, batches: Iterable[list[tuple[int, bytes]]], *, overwrite: bool = False
    ) -> Iterator[pb.WriteAck]:
        """One ``Write`` stream; yields each batch's acknowledgement as it arrives (pipelined)."""
        self._build(pb.GetShardRequest, shard=shard)  # refuse a bad shard number before streaming
        requests = (
            self._build(
                pb.WriteRequest,
                shard=shard,
                batch_id=i,
                overwrite=overwrite,
                records=[self._build(pb.Record, seq=seq, data=data) for seq, data in batch],
            )
            for i, batch in enumerate(batches)
        )
        try:
            yield from self._stub.Write(requests, metadata=self._metadata, timeout=self.stream_timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def read(
        self,
        shard: int,
        *,
        seqs: Iterable[int] | None = None,
        ranges: Iterable[tuple[int, int]] | None = None,
        window: tuple[int, int] | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> Iterator[tuple[int, bytes]]:
        """``(seq, record)`` for explicit ``seqs`` (in order) or for ``[start, end)`` ``ranges``."""
        request = self._build(
            pb.ReadRequest,
            shard=shard,
            max_message_bytes=max_message_bytes,
            seqs=list(seqs or ()),
            ranges=[self._build(pb.SeqRange, start=a, end=b) for a, b in ranges or ()],
            has_window=window is not None,
            window_start=window[0] if window else 0,
            window_end=window[1] if window else 0,
        )
        try:
            for response in self._stub.Read(request, metadata=self._metadata, timeout=self.stream_timeout):
                for record in response.records:
                    yield record.seq, record.data
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


def _batched(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    if size < 1:
        raise ValueError(f"batch_records: expected >= 1, got {size}")
    batch: list[tuple[int, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
