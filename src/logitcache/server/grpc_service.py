"""The gRPC service ``logitcache.v1.LogitCache`` over a :class:`~logitcache.server.store.Store`.

:func:`create_server` builds a ready-to-start ``grpc.Server`` (the service, the standard health
service, reflection, the auth interceptor) bound to an address, and returns it with its port, so
tests bind port 0. Errors travel as status codes via ``context.abort``; the store's typed errors
carry the code (see :mod:`logitcache.server.store`).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from logitcache import records, wire
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc
from logitcache.server.settings import ServerSettings
from logitcache.server.stats import ServerStats
from logitcache.server.store import InvalidRequestError, Store, StoreError, StoreFullError

__all__ = ["SERVICE_NAME", "LogitCacheService", "RunningServer", "create_server"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogitCache"].full_name
MUTATING_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("CreateShard", "SealShard", "Write"))
DEFAULT_READ_MESSAGE_BYTES = 1 << 20
MAX_READ_SEQS = 1 << 16  # per Read request (a hostile list cannot pin a worker for long)
MAX_READ_RANGES = 1 << 12
LIST_SEQS_RUNS = 1 << 15  # runs per ListSeqs message (16 bytes each at most: well under 1 MiB)


class LogitCacheService(pb_grpc.LogitCacheServicer):
    """Implements every RPC of ``logitcache.v1.LogitCache``."""

    def __init__(self, store: Store, stats: ServerStats, max_message_bytes: int) -> None:
        self.store = store
        self.stats = stats
        self.max_message_bytes = max_message_bytes

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
        self.stats.error(code.name)
        log.info("%s: %s", code.name, message)
        context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort raises

    def _fail(self, context: grpc.ServicerContext, exc: Exception) -> NoReturn:
        if isinstance(exc, grpc.RpcError):  # the request stream broke: the client left, or sent too much
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.CANCELLED
            self._abort(context, code, exc.details() if hasattr(exc, "details") else "the request stream broke")
        if isinstance(exc, StoreError):
            self._abort(context, grpc.StatusCode[exc.code], str(exc))
        if isinstance(exc, ValueError):
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.exception("internal error")
        self._abort(context, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def CreateShard(self, request: pb.CreateShardRequest, context: grpc.ServicerContext) -> pb.ShardInfo:
        try:
            if not request.HasField("manifest"):
                raise InvalidRequestError("manifest: expected a manifest for the new shard")
            manifest = wire.manifest_from_proto(request.manifest)
            shard = self.store.create_shard(request.shard, manifest, exist_ok=request.exist_ok)
            return wire.shard_info_to_proto(shard.stats())
        except Exception as exc:
            self._fail(context, exc)

    def GetShard(self, request: pb.GetShardRequest, context: grpc.ServicerContext) -> pb.ShardInfo:
        try:
            return wire.shard_info_to_proto(self.store.get(request.shard).stats())
        except Exception as exc:
            self._fail(context, exc)

    def ListShards(self, request: pb.ListShardsRequest, context: grpc.ServicerContext) -> pb.ListShardsResponse:
        try:
            return pb.ListShardsResponse(shards=[wire.shard_info_to_proto(s.stats()) for s in self.store.shards()])
        except Exception as exc:
            self._fail(context, exc)

    def SealShard(self, request: pb.SealShardRequest, context: grpc.ServicerContext) -> pb.ShardInfo:
        try:
            shard = self.store.get(request.shard)
            shard.seal()
            log.info("shard %d sealed", request.shard)
            return wire.shard_info_to_proto(shard.stats())
        except Exception as exc:
            self._fail(context, exc)

    def Write(
        self, request_iterator: Iterator[pb.WriteRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.WriteAck]:
        try:
            for request in request_iterator:
                started = time.perf_counter()
                shard = self.store.get(request.shard)
                if not request.records:
                    raise InvalidRequestError(f"records: expected at least one record in batch {request.batch_id}")
                items = [(r.seq, r.data) for r in request.records]
                result = shard.write_batch(items, overwrite=request.overwrite)
                self.stats.wrote(result.written, result.written_positions, result.written_bytes)
                self.stats.write_ack_seconds.observe(time.perf_counter() - started)
                log.debug(
                    "shard %d batch %d: %d written, %d unchanged, %.1f ms",
                    request.shard,
                    request.batch_id,
                    result.written,
                    result.unchanged,
                    (time.perf_counter() - started) * 1000,
                )
                yield pb.WriteAck(
                    batch_id=request.batch_id,
                    shard=request.shard,
                    written=result.written,
                    unchanged=result.unchanged,
                    positions=result.positions,
                )
        except Exception as exc:
            self._fail(context, exc)

    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadResponse]:
        try:
            shard = self.store.get(request.shard)
            if request.seqs and request.ranges:
                raise InvalidRequestError("read: expected either seqs or ranges, got both")
            if not request.seqs and not request.ranges:
                raise InvalidRequestError("read: expected seqs or ranges, got neither")
            if len(request.seqs) > MAX_READ_SEQS or len(request.ranges) > MAX_READ_RANGES:
                raise InvalidRequestError(
                    f"read: expected at most {MAX_READ_SEQS} seqs or {MAX_READ_RANGES} ranges per request, "
                    f"got {len(request.seqs)} seqs and {len(request.ranges)} ranges"
                )
            target = request.max_message_bytes or DEFAULT_READ_MESSAGE_BYTES
            target = min(target, self.max_message_bytes // 2)
            window = (request.window_start, request.window_end) if request.has_window else None
            if window is not None and not 0 <= window[0] < window[1]:
                raise InvalidRequestError(f"window: expected 0 <= start < end, got [{window[0]}, {window[1]})")
            chunks: Iterator[list[tuple[int, bytes]]]
            if request.seqs:
                chunks = shard.read_seqs(request.seqs, target)
            else:
                chunks = self._ranges(shard.read_range, request.ranges, target)
            started = time.perf_counter()
            for chunk in chunks:
                if window is not None:
                    chunk = [(seq, self._window(seq, data, window)) for seq, data in chunk]
                for seq, data in chunk:
                    if len(data) + 1024 > self.max_message_bytes:
                        raise StoreFullError(
                            f"seq {seq} is {len(data)} bytes, more than fits the server's max message size "
                            f"({self.max_message_bytes}); restart the server with a larger --max-message-bytes "
                            "or read it by windows"
                        )
                positions = sum(records.peek_positions(data) for _, data in chunk)  # verified by the store
                self.stats.read(len(chunk), positions, sum(len(data) for _, data in chunk))
                response = pb.ReadResponse(records=[pb.Record(seq=seq, data=data) for seq, data in chunk])
                self.stats.read_batch_seconds.observe(time.perf_counter() - started)
                yield response
                started = time.perf_counter()
        except Exception as exc:
            self._fail(context, exc)

    @staticmethod
    def _ranges(
        read_range: Callable[[int, int, int], Iterator[list[tuple[int, bytes]]]],
        ranges: Any,
        target: int,
    ) -> Iterator[list[tuple[int, bytes]]]:
        for r in ranges:
            if r.end < r.start:
                raise InvalidRequestError(f"range: expected start <= end, got [{r.start}, {r.end})")
            yield from read_range(r.start, r.end, target)

    @staticmethod
    def _window(seq: int, data: bytes, window: tuple[int, int]) -> bytes:
        try:
            return records.slice_positions(data, *window)
        except ValueError as exc:
            raise InvalidRequestError(f"seq {seq}: {exc}") from exc

    def ListSeqs(self, request: pb.ListSeqsRequest, context: grpc.ServicerContext) -> Iterator[pb.ListSeqsResponse]:
        try:
            shard = self.store.get(request.shard)
            for runs in shard.seq_runs(LIST_SEQS_RUNS):
                yield pb.ListSeqsResponse(runs=[pb.SeqRange(start=a, end=b) for a, b in runs])
        except Exception as exc:
            self._fail(context, exc)

    def GetStats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        s = self.stats
        return pb.StatsResponse(
            records_written=s.records_written,
            positions_written=s.positions_written,
            bytes_written=s.bytes_written,
            records_read=s.records_read,
            positions_read=s.positions_read,
            bytes_read=s.bytes_read,
            shards=len(self.store.shards()),
            uptime_seconds=s.uptime(),
            errors_by_code=dict(s.errors),
        )


class _AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Mutating calls need ``authorization: Bearer <token>`` metadata, else UNAUTHENTICATED."""

    def __init__(self, token: str, stats: ServerStats) -> None:
        self._expected = f"Bearer {token}".encode()
        self._stats = stats

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method not in MUTATING_METHODS:
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):
            return continuation(handler_call_details)
        self._stats.error("UNAUTHENTICATED")
        message = "authorization: expected 'Bearer <token>' metadata with the server's token"

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass
class RunningServer:
    """A started (or ready to start) gRPC server and what it serves."""

    server: grpc.Server
    port: int
    store: Store
    stats: ServerStats
    health: health.HealthServicer

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish for ``grace`` seconds, close the store."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.store.close()


def shard_sizes(store: Store) -> list[tuple[int, int, int, int]]:
    """``(shard, sequences, positions, disk_bytes)`` of every shard, for the metrics."""
    return [(s.shard, s.sequences, s.positions, s.disk_bytes) for s in (shard.stats() for shard in store.shards())]


def create_server(
    settings: ServerSettings, store: Store | None = None, stats: ServerStats | None = None
) -> RunningServer:
    """Build the server (not started) bound to ``settings.grpc``; ``port`` is the bound port."""
    store = store or Store(
        settings.data_dir, initial_map_size=settings.initial_map_bytes, max_map_size=settings.max_shard_bytes
    )
    if stats is None:
        stats = ServerStats()
        stats.attach(lambda: shard_sizes(store))
    interceptors = []
    if settings.auth_token is not None:
        interceptors.append(_AuthInterceptor(settings.auth_token.get_secret_value(), stats))
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.workers * 4,  # past this, new calls get RESOURCE_EXHAUSTED
    )
    pb_grpc.add_LogitCacheServicer_to_server(LogitCacheService(store, stats, settings.max_message_bytes), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    if settings.tls_cert is not None or settings.tls_key is not None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise ValueError("tls: expected both tls_cert and tls_key")
        credentials = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        port = server.add_secure_port(settings.grpc, credentials)
    else:
        port = server.add_insecure_port(settings.grpc)
    if port == 0:
        raise OSError(f"could not bind the gRPC address {settings.grpc}")
    return RunningServer(server=server, port=port, store=store, stats=stats, health=health_servicer)
