"""The gRPC service ``logitcache.v1.LogitCache``, served with ``grpc.aio`` over a :class:`.store.Store`.

**Concurrency.** Every call runs on one asyncio event loop, so an open stream that waits for its
client (an idle ``CacheWriter`` between batches, a ``Read`` nobody consumes) costs no thread.
LMDB work runs in two thread pools: ``--workers`` threads (by default as many as CPUs, at most 8:
more only fight over the GIL) for reads, lookups and record validation, and ``max(4, workers)``
for commits (:mod:`.commits`, group commit per shard), which mostly wait in fsync; so neither a
long read nor a durable commit stalls other calls.

**Bounds** (all settings; past each the call gets ``RESOURCE_EXHAUSTED`` at once, with gRPC's
``grpc-retry-pushback-ms`` trailer when retrying later can succeed):

* ``--max-concurrent-calls``: calls of this service at once, streams included;
* ``--max-stream-inflight-bytes``: a ``Write`` stream's received but unacknowledged batches;
  past it the server reads no more of that stream until acknowledgements go out (HTTP/2 flow
  control holds the client back: backpressure, not an error);
* ``--max-pending-commit-bytes``: batches waiting for a commit, over all streams;
* ``--max-message-bytes``: one message either way (a stored record too big to send is refused,
  naming the limit and how to read it by windows).

**Errors** travel as status codes via ``context.abort``: the store's typed errors carry their
code (:mod:`.errors`); ``INVALID_ARGUMENT`` means the request failed validation (a message that
does not parse included); anything unforeseen is ``INTERNAL``, with its traceback logged.
Mutating calls (``CreateShard``, ``SealShard``, ``DeleteShard``, ``Write``) need ``authorization: Bearer <token>``
when the server has a token.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from logitcache import wire
from logitcache.core import records
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.server.commits import Committer, StreamState
from logitcache.server.disk import human_bytes
from logitcache.server.errors import InvalidRequestError, ResponseTooLargeError, ServerBusyError, StoreError
from logitcache.server.shard import Batch
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["SERVICE_NAME", "Limits", "LogitCacheService", "service_handler"]

log = logging.getLogger(__name__)

_SERVICE = pb.DESCRIPTOR.services_by_name["LogitCache"]
SERVICE_NAME = _SERVICE.full_name
MUTATING_METHODS = frozenset({"CreateShard", "SealShard", "DeleteShard", "Write"})
DEFAULT_READ_MESSAGE_BYTES = 1 << 20
LIST_SEQS_RUNS = 1 << 15  # runs per ListSeqs message (16 bytes each at most: well under 1 MiB)
_MESSAGE_OVERHEAD = 1024  # framing of one record inside a ReadResponse, generously
_CLIENT_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION"})
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """The service's bounds (see the module docstring)."""

    max_concurrent_calls: int
    max_stream_inflight_bytes: int
    max_message_bytes: int


@dataclass(frozen=True)
class _Unparseable:
    """What the request deserializer gives for bytes that do not parse (answered INVALID_ARGUMENT)."""

    type_name: str
    error: str


def _parsed(request: Any) -> Any:
    if isinstance(request, _Unparseable):
        raise InvalidRequestError(f"request: cannot parse a {request.type_name}: {request.error}")
    return request


class _Budget:
    """Bytes a stream may have in flight; ``acquire`` waits while they are spent (one item always fits)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + n <= self.capacity)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.used -= n
            self._changed.notify_all()


class LogitCacheService:
    """Implements every RPC of ``logitcache.v1.LogitCache`` (register it with :func:`service_handler`)."""

    def __init__(
        self,
        store: Store,
        stats: ServerStats,
        limits: Limits,
        *,
        reads: Executor,
        commits: Executor,
        committer: Committer,
        auth_token: str | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.limits = limits
        self._reads = reads
        self._commits = commits
        self.committer = committer
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token is not None else None
        self.active_calls = 0

    # ----------------------------------------------------------------- plumbing

    def _in(self, pool: Executor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    @asynccontextmanager
    async def call(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Admission (the concurrent-call bound), auth, and errors as status codes, for one call."""
        admitted = False
        try:
            if self.active_calls >= self.limits.max_concurrent_calls:
                raise ServerBusyError(
                    f"the server is serving {self.active_calls} calls, its bound (--max-concurrent-calls); retry later"
                )
            admitted = True
            self.active_calls += 1
            if method in MUTATING_METHODS and self._expected_auth is not None:
                metadata = {k: v for k, v in context.invocation_metadata() or ()}
                given = metadata.get("authorization", "")
                given_bytes = given.encode() if isinstance(given, str) else bytes(given)
                if not hmac.compare_digest(given_bytes, self._expected_auth):
                    await self._abort(
                        context,
                        grpc.StatusCode.UNAUTHENTICATED,
                        "authorization: expected 'Bearer <token>' metadata with the server's token",
                    )
            yield
        except asyncio.CancelledError:  # the client left, or the server is stopping
            self.stats.error("CANCELLED")
            raise
        except grpc.aio.AbortError:
            raise
        except StoreError as exc:
            await self._abort(context, grpc.StatusCode[exc.code], str(exc), exc.retry_after)
        except Exception as exc:
            log.exception("%s: internal error", method)
            await self._abort(context, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if admitted:
                self.active_calls -= 1

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, retry_after: float | None = None
    ) -> None:
        self.stats.error(code.name)
        level = logging.DEBUG if code.name in _CLIENT_ERRORS or code.name == "UNAUTHENTICATED" else logging.WARNING
        log.log(level, "%s: %s", code.name, message)
        trailer = () if retry_after is None else (("grpc-retry-pushback-ms", str(int(retry_after * 1000))),)
        await context.abort(code, message, trailing_metadata=trailer)

    # ----------------------------------------------------------------- shards

    async def CreateShard(self, request: pb.CreateShardRequest, context: grpc.aio.ServicerContext) -> pb.ShardInfo:
        if not request.HasField("manifest"):
            raise InvalidRequestError("manifest: expected a manifest for the new shard")
        unknown = sorted({field.field_number for field in unknown_fields.UnknownFieldSet(request.manifest)})
        if unknown:  # a newer client's fields: storing the manifest without them would lose them silently
            raise InvalidRequestError(f"manifest: unknown field(s) {unknown}: this server's manifest has no such field")
        try:
            manifest = wire.manifest_from_proto(request.manifest)
        except ValueError as exc:
            raise InvalidRequestError(f"manifest: {exc}") from exc
        create = functools.partial(self.store.create_shard, request.shard, manifest, exist_ok=request.exist_ok)
        shard = await self._in(self._commits, create)
        return wire.shard_info_to_proto(await self._in(self._reads, shard.stats))

    async def GetShard(self, request: pb.GetShardRequest, context: grpc.aio.ServicerContext) -> pb.ShardInfo:
        shard = self.store.get(request.shard)
        info = await self._in(self._reads, shard.stats)
        shard.require_intact()
        return wire.shard_info_to_proto(info)

    async def ListShards(
        self, request: pb.ListShardsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListShardsResponse:
        infos = await self._in(self._reads, self.store.infos)
        return pb.ListShardsResponse(shards=[wire.shard_info_to_proto(info) for info in infos])

    async def SealShard(self, request: pb.SealShardRequest, context: grpc.aio.ServicerContext) -> pb.ShardInfo:
        shard = self.store.get(request.shard)
        await self._in(self._commits, shard.seal)
        log.info("shard %d sealed", request.shard)
        return wire.shard_info_to_proto(await self._in(self._reads, shard.stats))

    async def DeleteShard(self, request: pb.DeleteShardRequest, context: grpc.aio.ServicerContext) -> pb.ShardInfo:
        delete = functools.partial(self.store.delete_shard, request.shard, force=request.force)
        return wire.shard_info_to_proto(await self._in(self._commits, delete))

    async def GetStats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
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

    # ----------------------------------------------------------------- writes

    async def Write(
        self, requests: AsyncIterator[pb.WriteRequest | _Unparseable], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WriteAck]:
        """Batches are validated in order while earlier ones commit; acks go out in order, each after its commit."""
        budget = _Budget(self.limits.max_stream_inflight_bytes)
        stream = StreamState()
        results: asyncio.Queue[tuple[asyncio.Future[pb.WriteAck], int] | None] = asyncio.Queue()

        async def receive() -> None:
            try:
                async for message in requests:
                    request = _parsed(message)
                    items = [(r.seq, r.data) for r in request.records]  # each .data is a copy: take it once
                    nbytes = sum(len(data) for _, data in items)
                    await budget.acquire(nbytes)  # past the stream's bound: stop reading (flow control)
                    started = time.perf_counter()
                    shard = self.store.get(request.shard)
                    if not items:
                        raise InvalidRequestError(f"records: expected at least one record in batch {request.batch_id}")
                    headers = await self._in(self._reads, shard.validate, items)
                    commit = self._commit(shard, Batch(items, headers, request.overwrite), stream, request, started)
                    results.put_nowait((asyncio.ensure_future(commit), nbytes))
            except Exception as exc:  # the stream ends with this error, after the acks before it
                failed: asyncio.Future[pb.WriteAck] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                results.put_nowait((failed, 0))
            finally:
                results.put_nowait(None)

        receiver = asyncio.create_task(receive())
        try:
            while (result := await results.get()) is not None:
                ack = await result[0]
                await budget.release(result[1])
                yield ack
        finally:
            receiver.cancel()
            while not results.empty():  # batches after a failed one: not acknowledged, their errors not raised
                if (left := results.get_nowait()) is not None:
                    left[0].cancel()
                    if left[0].done() and not left[0].cancelled():
                        left[0].exception()

    async def _commit(
        self, shard: Any, batch: Batch, stream: StreamState, request: pb.WriteRequest, started: float
    ) -> pb.WriteAck:
        result = await self.committer.submit(shard, batch, stream)
        self.stats.wrote(result.written, result.written_positions, result.written_bytes)
        self.stats.write_ack_seconds.observe(time.perf_counter() - started)
        return pb.WriteAck(
            batch_id=request.batch_id,
            shard=request.shard,
            written=result.written,
            unchanged=result.unchanged,
            positions=result.positions,
        )

    # ----------------------------------------------------------------- reads

    async def Read(self, request: pb.ReadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Serialized ``ReadResponse`` messages (:func:`~logitcache.wire.read_response_bytes`)."""
        shard = self.store.get(request.shard)
        if request.seqs and request.ranges:
            raise InvalidRequestError("read: expected either seqs or ranges, got both")
        if not request.seqs and not request.ranges:
            raise InvalidRequestError("read: expected seqs or ranges, got neither")
        if len(request.seqs) > wire.MAX_READ_SEQS or len(request.ranges) > wire.MAX_READ_RANGES:
            raise InvalidRequestError(
                f"read: expected at most {wire.MAX_READ_SEQS} seqs or {wire.MAX_READ_RANGES} ranges per request, "
                f"got {len(request.seqs)} seqs and {len(request.ranges)} ranges"
            )
        target = min(request.max_message_bytes or DEFAULT_READ_MESSAGE_BYTES, self.limits.max_message_bytes // 2)
        window = (request.window_start, request.window_end) if request.has_window else None
        if window is not None and not 0 <= window[0] < window[1]:
            raise InvalidRequestError(f"window: expected 0 <= start < end, got [{window[0]}, {window[1]})")
        for r in request.ranges:
            if r.end < r.start:
                raise InvalidRequestError(f"range: expected start <= end, got [{r.start}, {r.end})")
        chunks: Iterator[list[tuple[int, bytes]]]
        if request.seqs:
            chunks = shard.read_seqs(list(request.seqs), target)
        else:
            chunks = (chunk for r in request.ranges for chunk in shard.read_range(r.start, r.end, target))

        def next_response() -> bytes | None:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            if window is not None:
                chunk = [(seq, _window(seq, data, window)) for seq, data in chunk]
            for seq, data in chunk:
                if len(data) + _MESSAGE_OVERHEAD > self.limits.max_message_bytes:
                    raise ResponseTooLargeError(
                        f"response: seq {seq} is {human_bytes(len(data))}, more than one message may carry "
                        f"(--max-message-bytes {human_bytes(self.limits.max_message_bytes)}): read it by windows of "
                        "positions (ReadRequest.window_start / window_end), or restart the server with a larger limit"
                    )
            positions = sum(records.peek_positions(data) for _, data in chunk)  # verified by the store
            self.stats.read(len(chunk), positions, sum(len(data) for _, data in chunk))
            return wire.read_response_bytes(chunk)  # serialized here, off the event loop

        started = time.perf_counter()
        upcoming = self._in(self._reads, next_response)
        try:
            while (answer := await upcoming) is not None:
                upcoming = self._in(self._reads, next_response)  # the next chunk is read while this one goes out
                self.stats.read_batch_seconds.observe(time.perf_counter() - started)
                yield answer
                started = time.perf_counter()
        finally:
            upcoming.cancel()

    async def ListSeqs(
        self, request: pb.ListSeqsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListSeqsResponse]:
        shard = self.store.get(request.shard)
        runs = shard.seq_runs(LIST_SEQS_RUNS)
        while (chunk := await self._in(self._reads, next, runs, None)) is not None:
            yield pb.ListSeqsResponse(runs=[pb.SeqRange(start=a, end=b) for a, b in chunk])


def _window(seq: int, data: bytes, window: tuple[int, int]) -> bytes:
    try:
        return records.slice_positions(data, *window)
    except ValueError as exc:
        raise InvalidRequestError(f"seq {seq}: {exc}") from exc


def _deserializer(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            return _Unparseable(message_type.DESCRIPTOR.full_name, str(exc))

    return parse


def service_handler(service: LogitCacheService) -> grpc.GenericRpcHandler:
    """The service's method handlers, built from the proto descriptor: every call goes through
    :meth:`LogitCacheService.call`, and requests that do not parse reach it as ``_Unparseable``."""
    handlers = {}
    for method in _SERVICE.methods:
        impl = getattr(service, method.name)
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        options = {
            "request_deserializer": _deserializer(request_type),
            # Read's method yields its messages already serialized
            "response_serializer": None if method.name == "Read" else response_type.SerializeToString,
        }
        if method.client_streaming:  # Write: each message is checked by the method itself
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streaming(service, method.name, impl), **options
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(service, method.name, impl, parse=True), **options
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(service, method.name, impl), **options)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _unary(service: LogitCacheService, name: str, impl: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with service.call(name, context):
            return await impl(_parsed(request), context)
        raise AssertionError("unreachable")  # call() aborts on every error

    return handle


def _streaming(
    service: LogitCacheService, name: str, impl: Callable[..., AsyncIterator[Any]], *, parse: bool = False
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with service.call(name, context):
            async for response in impl(_parsed(request) if parse else request, context):
                yield response

    return handle
