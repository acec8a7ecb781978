"""A synchronous client for one cache server or a cluster of them.

Example::

    with CacheClient(["10.0.0.1:50051", "10.0.0.2:50051"]) as client:
        client.create_shard(0, ShardManifest(vocab_size=128256, method="sampled", rounds=50))
        summary = client.write(0, [(seq, record_bytes), ...])     # returns once all are acked
        for seq, data in client.read(0, seqs=[3, 1, 2]):          # in request order
            record = records.decode(data)

**Cluster routing.** Shards are the unit of placement. The client asks every server which shards it
holds (``ListShards``) and sends each request for a shard to its server; the map is refreshed when
a shard is not in it, so shards created elsewhere appear (a server that does not answer is
skipped). A shard moved to another server is found after ``refresh()``. A shard no server holds is a
:class:`~logitcache.client.errors.NotFoundError` naming the servers. A new shard goes to the server
``address=`` names, else to ``addresses[shard % len(addresses)]``. If two servers hold the same
shard (a sealed copy), the first in ``addresses`` order serves it.

**Deadlines and retries.** ``timeout`` bounds each unary call, and each wait for the next message of
a ``Read`` stream (a server silent that long is given up on); ``stream_timeout`` bounds a whole
``Write`` or ``Read`` stream (none by default: a long stream is normal). Idempotent calls (reads,
lookups, sealing, ``create_shard(exist_ok=True)``) are retried ``retries`` times with exponential
backoff on UNAVAILABLE and DEADLINE_EXCEEDED; a broken ``Read`` stream resumes after the last record
it delivered, so nothing is repeated or skipped. ``write`` is not retried here: the teacher-side
:class:`~logitcache.writer.CacheWriter` does that with exact resends.

Every failure is raised as a :class:`~logitcache.client.errors.CacheError` subclass (out-of-range
numbers too, as ``InvalidArgumentError``). The client can be pickled and used after ``fork``
(DataLoader workers): channels are opened lazily, once per process.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from logitcache import wire
from logitcache.client.errors import (
    CacheError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    from_rpc_error,
    is_transient,
)
from logitcache.core.manifest import ShardInfo, ShardManifest
from logitcache.core.results import BatchAck, StatsSnapshot, WriteSummary
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc

__all__ = ["BatchAck", "CacheClient", "ShardInfo", "StatsSnapshot", "WriteStream", "WriteSummary"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


class WriteStream(Iterator[BatchAck]):
    """One ``Write`` stream (:meth:`CacheClient.write_batches`): each batch's acknowledgement, in order.

    The stream opens when it is first iterated. :meth:`cancel` may be called from any thread: the
    iteration then raises :class:`~logitcache.client.errors.CancelledError` (a stream cancelled
    before it opened is cancelled as it opens).
    """

    def __init__(
        self, client: CacheClient, shard: int, batches: Iterable[list[tuple[int, bytes]]], *, overwrite: bool
    ) -> None:
        self._lock = threading.Lock()
        self._call: _Cancellable | None = None
        self._cancelled = False
        self._acks = client._write_stream(shard, batches, overwrite, self._opened, lambda: self._cancelled)

    def _opened(self, call: _Cancellable) -> None:
        with self._lock:
            self._call = call
            cancelled = self._cancelled
        if cancelled:
            call.cancel()

    def cancel(self) -> None:
        """End the stream from this side; batches not acknowledged yet may or may not be stored."""
        with self._lock:
            self._cancelled = True
            call = self._call
        if call is not None:
            call.cancel()

    def __next__(self) -> BatchAck:
        return next(self._acks)


class _Connection:
    """One server's channel and stub."""

    def __init__(self, address: str, options: list[tuple[str, Any]], root_cert: bytes | None) -> None:
        if root_cert is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_cert), options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.LogitCacheStub(self.channel)
        # Read's messages as received: parsed by wire.read_response_records, no protobuf objects
        self.read_raw = self.channel.unary_stream(
            "/logitcache.v1.LogitCache/Read", request_serializer=pb.ReadRequest.SerializeToString
        )


class _SilenceWatch:
    """Cancels a ``Read`` call that has been silent for ``seconds`` while the client waits on it (None:
    never). The time the caller spends on what it was given does not count.

    A stream that a server accepted while it was stopping can stay open with nothing more on it (no
    message, no status) for as long as that server's process lives; the client gives up on it, and
    the read is retried or resumed, rather than wait forever.
    """

    def __init__(self, call: _Cancellable, seconds: float | None) -> None:
        self.fired = False
        self._call = call
        self._seconds = seconds
        self._deadline = float("inf")
        self._done = threading.Event()
        if seconds is not None:
            threading.Thread(target=self._watch, name="logitcache-read-watch", daemon=True).start()

    def _watch(self) -> None:
        assert self._seconds is not None
        while not self._done.wait(min(max(self._deadline - time.monotonic(), 0.0), self._seconds)):
            if time.monotonic() >= self._deadline:
                self.fired = True
                self._call.cancel()
                return

    def waiting(self) -> None:
        if self._seconds is not None:
            self._deadline = time.monotonic() + self._seconds

    def heard(self) -> None:
        self._deadline = float("inf")

    def stop(self) -> None:
        self._done.set()


class CacheClient:
    """Synchronous client for one server or several. Thread-safe (gRPC channels are)."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        auth_token: str | None = None,
        tls_root_cert: Path | bytes | None = None,
        timeout: float | None = 60.0,
        stream_timeout: float | None = None,
        max_message_bytes: int = 64 << 20,
        retries: int = 4,
        backoff: float = 0.1,
    ) -> None:
        self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not self.addresses:
            raise ValueError("addresses: expected at least one server address")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"addresses: expected distinct addresses, got {self.addresses}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries, backoff: expected >= 0, got {retries}, {backoff}")
        self._root_cert = tls_root_cert.read_bytes() if isinstance(tls_root_cert, Path) else tls_root_cert
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.timeout = timeout  # deadline of each unary call, seconds
        self.stream_timeout = stream_timeout  # deadline of a whole Write or Read stream (None: none)
        self.retries = retries
        self.backoff = backoff
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}
        self._pid = os.getpid()
        self._shard_map: dict[int, str] = {}
        self._down: list[CacheError] = []  # servers that did not answer the last refresh

    @property
    def address(self) -> str:
        """The first server's address (the only one for a single-server client)."""
        return self.addresses[0]

    # ----------------------------------------------------------------- plumbing

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _connections={}, _pid=-1)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for connection in self._connections.values():
                    connection.channel.close()
            self._connections = {}

    def _stub(self, address: str) -> pb_grpc.LogitCacheStub:
        return self._connection(address).stub

    def _connection(self, address: str) -> _Connection:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not touch its parent's channels
                self._connections, self._pid = {}, os.getpid()
            connection = self._connections.get(address)
            if connection is None:
                connection = self._connections[address] = _Connection(address, self._options, self._root_cert)
            return connection

    def _pause(self, exc: CacheError, attempt: int) -> None:
        """Wait before retry ``attempt`` (0-based): exponential backoff, or the server's pushback if longer."""
        time.sleep(max(min(self.backoff * 2**attempt, 2.0), exc.retry_after or 0.0))

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, retried on transient errors (:func:`~logitcache.client.errors.is_transient`)."""
        for i in range(self.retries + 1):
            try:
                return attempt()
            except CacheError as exc:
                if i == self.retries or not is_transient(exc):
                    raise
                self._pause(exc, i)
        raise AssertionError("unreachable")

    def _unary(self, address: str, name: str, request: Any, *, idempotent: bool = True) -> Any:
        def attempt() -> Any:
            try:
                return getattr(self._stub(address), name)(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return self._retrying(attempt) if idempotent else attempt()

    @staticmethod
    def _build(factory: Any, **fields: Any) -> Any:
        """A request message; out-of-range numbers become an INVALID_ARGUMENT error here, not a ValueError."""
        try:
            return factory(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"request: {exc}") from None

    # ----------------------------------------------------------------- routing

    def refresh(self) -> dict[int, str]:
        """Ask every server which shards it holds; return the new ``shard → address`` map."""
        found: dict[int, str] = {}
        down: list[CacheError] = []
        for address in reversed(self.addresses):  # the first server wins a shard held twice
            try:
                infos = self._list_on(address)
            except CacheError as exc:  # one server down must not stop routing to the others
                if not is_transient(exc):
                    raise
                log.warning("%s did not answer ListShards: %s", address, exc)
                down.append(exc)
                continue
            for info in infos:
                found[info.shard] = address
        if len(down) == len(self.addresses):
            raise down[0]
        with self._lock:
            self._shard_map = found
            self._down = down
        return dict(found)

    def locate(self, shard: int) -> str:
        """The address of the server holding ``shard``; ``NotFoundError`` if none does."""
        address = self._shard_map.get(shard)
        if address is None:
            address = self.refresh().get(shard)
        if address is None:
            if len(self.addresses) == 1:
                return self.address  # the server's own NOT_FOUND says the rest
            if self._down:  # it may be on a server that did not answer: retryable, not NOT_FOUND
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"shard {shard} not found; some servers did not answer: {self._down[0]}",
                )
            raise NotFoundError(
                grpc.StatusCode.NOT_FOUND, f"shard {shard} is on none of the servers {', '.join(self.addresses)}"
            )
        return address

    # ----------------------------------------------------------------- shards

    def _list_on(self, address: str) -> list[ShardInfo]:
        response = self._unary(address, "ListShards", pb.ListShardsRequest())
        return [wire.shard_info_from_proto(s) for s in response.shards]

    def create_shard(
        self, shard: int, manifest: ShardManifest, *, exist_ok: bool = False, address: str | None = None
    ) -> ShardInfo:
        """Create ``shard`` on ``address``, else where it already is, else on ``addresses[shard % n]``."""
        request = self._build(
            pb.CreateShardRequest, shard=shard, manifest=wire.manifest_to_proto(manifest), exist_ok=exist_ok
        )
        if address is None:
            address = self.refresh().get(shard)
            if address is None and self._down:  # it may exist on a server that did not answer
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cannot place shard {shard}: some servers did not answer ({self._down[0]}); "
                    "retry, or name the server with address=",
                )
            address = address or self.addresses[shard % len(self.addresses)]
        elif address not in self.addresses:
            raise ValueError(f"address: expected one of {self.addresses}, got {address!r}")
        info = wire.shard_info_from_proto(self._unary(address, "CreateShard", request, idempotent=exist_ok))
        with self._lock:
            self._shard_map.setdefault(shard, address)
        return info

    def get_shard(self, shard: int) -> ShardInfo:
        request = self._build(pb.GetShardRequest, shard=shard)
        return wire.shard_info_from_proto(self._unary(self.locate(shard), "GetShard", request))

    def list_shards(self) -> list[ShardInfo]:
        """Every shard of every server, by shard id (a shard held twice: the first server's view)."""
        merged: dict[int, ShardInfo] = {}
        for address in self.addresses:
            for info in self._list_on(address):
                merged.setdefault(info.shard, info)
        return [merged[shard] for shard in sorted(merged)]

    def seal_shard(self, shard: int) -> ShardInfo:
        request = self._build(pb.SealShardRequest, shard=shard)
        return wire.shard_info_from_proto(self._unary(self.locate(shard), "SealShard", request))

    def delete_shard(self, shard: int, *, force: bool = False) -> ShardInfo:
        """Delete ``shard`` and its files; its info just before. A sealed one needs ``force``
        (else :class:`~logitcache.client.errors.FailedPreconditionError`)."""
        request = self._build(pb.DeleteShardRequest, shard=shard, force=force)
        info = wire.shard_info_from_proto(self._unary(self.locate(shard), "DeleteShard", request, idempotent=False))
        with self._lock:
            self._shard_map.pop(shard, None)
        return info

    def stats(self, address: str | None = None) -> StatsSnapshot:
        """One server's counters (the first server's by default)."""
        return wire.stats_from_proto(self._unary(address or self.address, "GetStats", pb.StatsRequest()))

    def seq_runs(self, shard: int) -> list[tuple[int, int]]:
        """The seqs ``shard`` holds as ascending ``[start, end)`` runs of consecutive seqs."""
        request = self._build(pb.ListSeqsRequest, shard=shard)
        address = self.locate(shard)

        def attempt() -> list[tuple[int, int]]:
            try:
                stream = self._stub(address).ListSeqs(request, timeout=self.stream_timeout, metadata=self._metadata)
                return [(r.start, r.end) for response in stream for r in response.runs]
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return self._retrying(attempt)

    def list_seqs(self, shard: int) -> npt.NDArray[np.uint64]:
        """The seqs ``shard`` holds, ascending. ``[n]`` uint64."""
        runs = self.seq_runs(shard)
        if not runs:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate([np.arange(a, b, dtype=np.uint64) for a, b in runs])

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
        self,
        shard: int,
        batches: Iterable[list[tuple[int, bytes]]],
        *,
        overwrite: bool = False,
    ) -> WriteStream:
        """One ``Write`` stream; yields each batch's acknowledgement as it arrives (pipelined).

        Batch ``i`` of ``batches`` is sent with ``batch_id=i``; ``batches`` is consumed as the stream
        sends. The returned :class:`WriteStream` can be cancelled from another thread.
        """
        return WriteStream(self, shard, batches, overwrite=overwrite)

    def _write_stream(
        self,
        shard: int,
        batches: Iterable[list[tuple[int, bytes]]],
        overwrite: bool,
        on_open: Callable[[_Cancellable], None],
        cancelled: Callable[[], bool],
    ) -> Iterator[BatchAck]:
        """The ``Write`` stream behind :class:`WriteStream`; ``on_open`` receives the call once it exists."""
        self._build(pb.GetShardRequest, shard=shard)  # refuse a bad shard number before streaming
        address = self.locate(shard)

        def requests() -> Iterator[Any]:
            for i, batch in enumerate(batches):
                if cancelled():  # nothing more is sent once the stream is cancelled, even before it opened
                    return
                records = [self._build(pb.Record, seq=seq, data=data) for seq, data in batch]
                yield self._build(pb.WriteRequest, shard=shard, batch_id=i, overwrite=overwrite, records=records)

        try:
            call = self._stub(address).Write(requests(), metadata=self._metadata, timeout=self.stream_timeout)
            on_open(call)
            for ack in call:
                yield wire.batch_ack_from_proto(ack)
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
        """``(seq, record)`` for explicit ``seqs`` (in order) or for ``[start, end)`` ``ranges``.

        A stream broken by a transient error resumes after the last record delivered.
        """
        views = self.read_views(shard, seqs=seqs, ranges=ranges, window=window, max_message_bytes=max_message_bytes)
        for seq, data in views:
            yield seq, data.tobytes()

    def read_views(
        self,
        shard: int,
        *,
        seqs: Iterable[int] | None = None,
        ranges: Iterable[tuple[int, int]] | None = None,
        window: tuple[int, int] | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> Iterator[tuple[int, memoryview]]:
        """:meth:`read`, each record a read-only ``memoryview`` into the message it came in, not a copy
        (what the loader uses; a view keeps its whole message alive)."""
        all_seqs = [int(s) for s in (() if seqs is None else seqs)]
        all_ranges = [(int(a), int(b)) for a, b in (() if ranges is None else ranges)]
        if (seqs is not None or ranges is not None) and not all_seqs and not all_ranges:
            return  # an empty list asks for nothing
        if all_seqs and all_ranges:
            raise InvalidArgumentError(
                grpc.StatusCode.INVALID_ARGUMENT, "read: expected either seqs or ranges, got both"
            )
        if len(all_seqs) > wire.MAX_READ_SEQS or len(all_ranges) > wire.MAX_READ_RANGES:  # split, in order
            step = wire.MAX_READ_RANGES if all_ranges else wire.MAX_READ_SEQS
            for at in range(0, max(len(all_seqs), len(all_ranges)), step):
                yield from self.read_views(
                    shard,
                    seqs=all_seqs[at : at + wire.MAX_READ_SEQS] if all_seqs else None,
                    ranges=all_ranges[at : at + wire.MAX_READ_RANGES] if all_ranges else None,
                    window=window,
                    max_message_bytes=max_message_bytes,
                )
            return
        pending_seqs = all_seqs
        pending_ranges = all_ranges
        request = self._read_request(shard, pending_seqs, pending_ranges, window, max_message_bytes)
        address = self.locate(shard)
        failures = 0
        while True:
            delivered = 0
            call = self._connection(address).read_raw(request, metadata=self._metadata, timeout=self.stream_timeout)
            silent = _SilenceWatch(call, self.timeout)
            try:
                try:
                    messages = iter(call)
                    while True:
                        silent.waiting()
                        message = next(messages, None)
                        silent.heard()
                        if message is None:
                            return
                        try:
                            received = wire.read_response_records(message)
                        except ValueError as exc:
                            raise DataLossError(grpc.StatusCode.DATA_LOSS, f"read: shard {shard}: {exc}") from None
                        for seq, data in received:
                            yield seq, data
                            delivered += 1
                            last = seq
                except grpc.RpcError as exc:
                    if silent.fired:
                        raise DeadlineExceededError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"read: shard {shard}: {address} sent nothing for {self.timeout} s",
                        ) from None
                    raise from_rpc_error(exc) from None
                finally:
                    silent.stop()
            except CacheError as exc:  # a Read is never cancelled by this side: CANCELLED is a server shutting down
                if not (is_transient(exc) or isinstance(exc, CancelledError)):
                    raise
                failures = 0 if delivered else failures + 1
                if failures > self.retries:
                    raise
                self._pause(exc, max(failures - 1, 0))
                if delivered:  # resume after the last record delivered
                    if pending_seqs:
                        pending_seqs = pending_seqs[delivered:]
                        if not pending_seqs:
                            return
                    else:
                        while pending_ranges and not pending_ranges[0][0] <= last < pending_ranges[0][1]:
                            pending_ranges.pop(0)
                        pending_ranges[0] = (last + 1, pending_ranges[0][1])
                    request = self._read_request(shard, pending_seqs, pending_ranges, window, max_message_bytes)

    def _read_request(
        self,
        shard: int,
        seqs: list[int],
        ranges: list[tuple[int, int]],
        window: tuple[int, int] | None,
        max_message_bytes: int,
    ) -> pb.ReadRequest:
        request: pb.ReadRequest = self._build(
            pb.ReadRequest,
            shard=shard,
            max_message_bytes=max_message_bytes,
            seqs=seqs,
            ranges=[self._build(pb.SeqRange, start=a, end=b) for a, b in ranges],
            has_window=window is not None,
            window_start=window[0] if window else 0,
            window_end=window[1] if window else 0,
        )
        return request


def _batched(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    if size < 1:
        raise ValueError(f"batch_records: expected >= 1, got {size}")
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch
