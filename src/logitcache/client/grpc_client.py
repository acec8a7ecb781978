"""A synchronous client for one cache server or a cluster of them.

Example::

    with CacheClient(["10.0.0.1:50051", "10.0.0.2:50051"]) as client:  # or "dns:///<headless Service>:50051"
        client.create_shard(0, ShardManifest(vocab_size=128256, method="sampled", rounds=50))
        summary = client.write(0, [(seq, record_bytes), ...])     # returns once all are acked
        for seq, data in client.read(0, seqs=[3, 1, 2]):          # in request order
            record = records.decode(data)

**Cluster routing.** Shards are the unit of placement. ``addresses`` are servers (``host:port``) and
DNS targets in gRPC's naming syntax, ``dns:///name:port``: a Kubernetes headless Service, say
``dns:///logitcache.default.svc.cluster.local:50051``, whose name has one A/AAAA record per pod. A
name is resolved (``socket.getaddrinfo``, bounded by ``timeout``) to all its addresses whenever the
routing map is built, so the pods of a grown StatefulSet are found with no change to the client.
:attr:`CacheClient.addresses` is the current list: the entries in the order given, each name
replaced by its addresses sorted (IPv4, then IPv6 bracketed), duplicates dropped. A name that does
not resolve is an :class:`~logitcache.client.errors.UnavailableError` naming it.

The map is built on first use, by ``refresh()``, and again when a shard is not in it (so shards
created elsewhere appear): the client asks every server which shards it holds (``ListShards``); a
server that does not answer is skipped, and none answering is an ``UnavailableError``. A shard no
server holds is a :class:`~logitcache.client.errors.NotFoundError` naming the servers (an
``UnavailableError`` while some did not answer). A shard's *first holder* (first in ``addresses``)
takes its writes, sealing and deletion; writes never fail over. Reads (``read``, ``read_views``,
``get_shard``, ``seq_runs``, ``list_seqs``) of a shard whose first holder has it sealed go to
every holder with an identical sealed copy (same manifest and counts), in order: on a transient
error (below) from one, the next is tried at once, a ``Read`` stream resuming there after the last
record delivered, and the one that answered is tried first until the next refresh. Any other shard
is read from its first holder only. A new shard goes to the server ``address=`` names, else to
``addresses[shard % len(addresses)]``: deterministic for one address list, but a DNS target's list
grows with the StatefulSet (and pods' addresses change when they restart), so where a *new* shard
lands changes with it; existing shards are found through ``ListShards`` regardless. Name the server
with ``address=`` for a fixed placement. With TLS, a resolved address is verified against its DNS
name (the servers' certificate must name the Service).

**Deadlines and retries.** ``timeout`` bounds each unary call, and each wait for the next message of
a ``Read`` stream (a server silent that long is given up on); ``stream_timeout`` bounds a whole
``Write`` or ``Read`` stream (none by default: a long stream is normal). Idempotent calls (reads,
lookups, sealing, ``create_shard(exist_ok=True)``) are retried ``retries`` times with exponential
backoff on UNAVAILABLE, DEADLINE_EXCEEDED and the server's pushback (a round of retries tries each
holder of a sealed copy once; with DNS targets the names are resolved again and the map rebuilt
before the next round, so a restarted pod's new address is found); a broken ``Read`` stream resumes
after the last record it delivered, so nothing is repeated or skipped. ``write`` is not retried
here: the teacher-side :class:`~logitcache.writer.CacheWriter` does that with exact resends.

Every failure is raised as a :class:`~logitcache.client.errors.CacheError` subclass (out-of-range
numbers too, as ``InvalidArgumentError``). The client can be pickled and used after ``fork``
(DataLoader workers): channels are opened lazily, once per process.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
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

    def __init__(
        self, address: str, options: list[tuple[str, Any]], root_cert: bytes | None, tls_name: str | None = None
    ) -> None:
        if root_cert is not None:
            if tls_name is not None:  # an address resolved from a DNS target: verify the certificate against the name
                options = [*options, ("grpc.ssl_target_name_override", tls_name)]
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_cert), options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.LogitCacheStub(self.channel)
        # Read's messages as received: parsed by wire.read_response_records, no protobuf objects
        self.read_raw = self.channel.unary_stream(
            "/logitcache.v1.LogitCache/Read", request_serializer=pb.ReadRequest.SerializeToString
        )


@dataclass(frozen=True)
class _DnsTarget:
    """A ``dns:///name:port`` entry of ``addresses``."""

    text: str  # as given
    name: str
    port: int

    @classmethod
    def parse(cls, entry: str) -> _DnsTarget | None:
        """The target ``entry`` names; None for a plain address. ``ValueError`` for a malformed one."""
        if not entry.startswith("dns:"):
            return None
        rest = entry[len("dns:") :]
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if authority or not slash:
                raise ValueError(
                    f"addresses: {entry!r}: expected dns:///name:port (a DNS server authority is not supported)"
                )
        if rest.startswith("["):
            name, _, tail = rest[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else ""
        else:
            name, _, port = rest.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"addresses: {entry!r}: expected dns:///name:port with a port in 1..65535")
        return cls(entry, name, int(port))

    def resolve(self, timeout: float | None) -> list[str]:
        """Every IPv4 and IPv6 address of the name, as sorted ``host:port`` addresses; ``UnavailableError``
        if it does not resolve within ``timeout`` seconds (None: however long the resolver takes)."""
        answer: list[Any] = []
        done = threading.Event()

        def lookup() -> None:  # on a thread of its own: getaddrinfo has no timeout of its own
            try:
                answer.append(socket.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM))
            except OSError as exc:  # socket.gaierror: no such name, no records, the resolver failed
                answer.append(exc)
            finally:
                done.set()

        threading.Thread(target=lookup, name="logitcache-resolve", daemon=True).start()
        if not done.wait(timeout):
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, f"cannot resolve {self.text}: no answer within {timeout} s"
            )
        if isinstance(answer[0], OSError):
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"cannot resolve {self.text}: {answer[0]}")
        found = {
            ipaddress.ip_address(str(sockaddr[0]))
            for family, _, _, _, sockaddr in answer[0]
            if family in (socket.AF_INET, socket.AF_INET6)
        }
        if not found:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"cannot resolve {self.text}: no IP address")
        ordered = sorted(found, key=lambda ip: (ip.version, int(ip), str(ip)))
        return [f"{ip}:{self.port}" if ip.version == 4 else f"[{ip}]:{self.port}" for ip in ordered]


@dataclass(frozen=True)
class _Route:
    """Where the calls for one shard go."""

    first: str  # its first holder: writes, sealing, deletion
    readers: tuple[str, ...]  # reads, in the order tried: the identical sealed copies, or just `first`


def _route(held: list[tuple[str, ShardInfo]]) -> _Route:
    """The route of a shard from its holders' answers, in ``addresses`` order."""
    first, info = held[0]
    if not info.sealed or info.damage is not None:
        return _Route(first, (first,))
    readers = [first]
    for address, other in held[1:]:
        if other.sealed and _same_copy(info, other):
            readers.append(address)
        else:
            log.warning(
                "shard %d: %s holds a copy that differs from %s's sealed one; not read", info.shard, address, first
            )
    return _Route(first, tuple(readers))


def _same_copy(a: ShardInfo, b: ShardInfo) -> bool:
    fields = ("manifest", "sequences", "positions", "record_bytes", "first_seq", "last_seq", "damage")
    return all(getattr(a, name) == getattr(b, name) for name in fields)


class _Failover:
    """The holder the next attempt of an idempotent call for ``shard`` goes to (module docstring).

    Each round tries every reader once, the next one at once after a transient failure; after a
    round in which all failed, it waits (backoff), gets the route again (for DNS targets, after a
    fresh resolution) and starts the next round, up to ``retries`` rounds in which nothing was
    delivered; then the last error is raised.
    """

    def __init__(self, client: CacheClient, shard: int) -> None:
        self._client = client
        self._shard = shard
        self._readers = client._route_of(shard).readers
        self._at = 0
        self._tried = 0  # readers that failed in this round
        self._rounds = 0  # rounds in a row, since the last progress, in which nothing was delivered
        self._progressed = False  # something was delivered in this round
        self._answered = False  # the current reader answered (it is tried first from then on)

    @property
    def address(self) -> str:
        return self._readers[self._at]

    def answered(self) -> None:
        """The current reader answered: reads of the shard go to it first until the next refresh."""
        if not self._answered:
            self._answered = True
            if self._at:
                self._client._prefer(self._shard, self.address)

    def failed(self, exc: CacheError, *, delivered: bool = False) -> None:
        """After a transient failure of the current reader (``delivered``: after part of its answer):
        move on, or raise ``exc`` once the retries are spent."""
        self._answered = False
        if delivered:  # progress: every reader gets its `retries` rounds again
            self._progressed, self._rounds = True, 0
        self._tried += 1
        if self._tried < len(self._readers):
            log.warning("shard %d: %s failed (%s); reading from %s", self._shard, self.address, exc, self._next())
            self._at = (self._at + 1) % len(self._readers)
            return
        if not self._progressed:
            self._rounds += 1
            if self._rounds > self._client.retries:
                raise exc
        self._client._pause(exc, max(self._rounds - 1, 0))
        self._readers = self._client._next_round(self._shard, self._readers)
        self._at = self._tried = 0
        self._progressed = False

    def _next(self) -> str:
        return self._readers[(self._at + 1) % len(self._readers)]


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
        self.targets = [addresses] if isinstance(addresses, str) else list(addresses)  # as given
        if not self.targets:
            raise ValueError("addresses: expected at least one server address")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"addresses: expected distinct addresses, got {self.targets}")
        self._dns = {entry: target for entry in self.targets if (target := _DnsTarget.parse(entry)) is not None}
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
        # the current server addresses (None: DNS targets not resolved yet) and the DNS name of each resolved one
        self._addresses: list[str] | None = None if self._dns else list(self.targets)
        self._tls_names: dict[str, str] = {}
        self._shard_map: dict[int, _Route] = {}
        self._down: list[CacheError] = []  # servers that did not answer the last refresh

    @property
    def addresses(self) -> list[str]:
        """The servers: the static addresses and what the DNS targets resolved to at the last refresh
        (resolved now if there was none)."""
        return list(self._addresses if self._addresses is not None else self._resolve())

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
                connection = _Connection(address, self._options, self._root_cert, self._tls_names.get(address))
                self._connections[address] = connection
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

    def _once(self, address: str, name: str, request: Any) -> Any:
        """One unary call, not retried."""
        try:
            return getattr(self._stub(address), name)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def _unary(self, address: str, name: str, request: Any, *, idempotent: bool = True) -> Any:
        if not idempotent:
            return self._once(address, name, request)
        return self._retrying(lambda: self._once(address, name, request))

    def _on_readers(self, shard: int, attempt: Callable[[str], T]) -> T:
        """``attempt(address)`` on the readers of ``shard``, failing over and retried (:class:`_Failover`)."""
        failover = _Failover(self, shard)
        while True:
            try:
                result = attempt(failover.address)
            except CacheError as exc:
                if not is_transient(exc):
                    raise
                failover.failed(exc)
                continue
            failover.answered()
            return result

    @staticmethod
    def _build(factory: Any, **fields: Any) -> Any:
        """A request message; out-of-range numbers become an INVALID_ARGUMENT error here, not a ValueError."""
        try:
            return factory(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"request: {exc}") from None

    # ----------------------------------------------------------------- routing

    def _resolve(self) -> list[str]:
        """Resolve the DNS targets now; the new address list (stored)."""
        addresses: list[str] = []
        tls_names: dict[str, str] = {}
        for entry in self.targets:
            target = self._dns.get(entry)
            for address in [entry] if target is None else target.resolve(self.timeout):
                if address not in addresses:
                    addresses.append(address)
                    if target is not None:
                        tls_names[address] = target.name
        with self._lock:
            self._addresses, self._tls_names = addresses, tls_names
        return addresses

    def refresh(self) -> dict[int, str]:
        """Resolve the DNS targets, ask every server which shards it holds; return the new ``shard → first
        holder`` map (:meth:`holders` gives the copies reads fail over between)."""
        return self._refresh(retry=True)

    def _refresh(self, *, retry: bool) -> dict[int, str]:
        addresses = self._resolve() if self._dns else self.addresses
        held: dict[int, list[tuple[str, ShardInfo]]] = {}
        down: list[CacheError] = []
        for address in addresses:
            try:
                infos = self._list_on(address, retry=retry)
            except CacheError as exc:  # one server down must not stop routing to the others
                if not is_transient(exc):
                    raise
                log.warning("%s did not answer ListShards: %s", address, exc)
                down.append(exc)
                continue
            for info in infos:
                held.setdefault(info.shard, []).append((address, info))
        if len(down) == len(addresses):
            raise down[0]
        routes = {shard: _route(holders) for shard, holders in held.items()}
        with self._lock:
            self._shard_map = routes
            self._down = down
        return {shard: route.first for shard, route in routes.items()}

    def _route_of(self, shard: int) -> _Route:
        route = self._shard_map.get(shard)
        if route is None:
            self.refresh()
            route = self._shard_map.get(shard)
        if route is None:
            addresses = self.addresses
            if len(addresses) == 1:
                return _Route(addresses[0], (addresses[0],))  # the server's own NOT_FOUND says the rest
            if self._down:  # it may be on a server that did not answer: retryable, not NOT_FOUND
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"shard {shard} not found; some servers did not answer: {self._down[0]}",
                )
            raise NotFoundError(
                grpc.StatusCode.NOT_FOUND, f"shard {shard} is on none of the servers {', '.join(addresses)}"
            )
        return route

    def locate(self, shard: int) -> str:
        """The address of the server holding ``shard`` (its first holder, which takes its writes);
        ``NotFoundError`` if none does."""
        return self._route_of(shard).first

    def holders(self, shard: int) -> list[str]:
        """The servers reads of ``shard`` go to, in the order tried: every identical sealed copy, else
        just :meth:`locate`'s."""
        return list(self._route_of(shard).readers)

    def _prefer(self, shard: int, address: str) -> None:
        """Reads of ``shard`` go to ``address`` first (it answered when the one before it did not)."""
        with self._lock:
            route = self._shard_map.get(shard)
            if route is not None and address in route.readers:
                rest = tuple(a for a in route.readers if a != address)
                self._shard_map[shard] = _Route(route.first, (address, *rest))

    def _next_round(self, shard: int, readers: tuple[str, ...]) -> tuple[str, ...]:
        """The readers for the next round after all of ``readers`` failed. With DNS targets the names
        are resolved again and the map rebuilt (a restarted pod has a new address), best effort."""
        if not self._dns:
            return readers
        try:
            self._refresh(retry=False)
        except CacheError as exc:
            if not is_transient(exc):
                raise
            return readers
        route = self._shard_map.get(shard)
        return readers if route is None else route.readers

    # ----------------------------------------------------------------- shards

    def _list_on(self, address: str, *, retry: bool = True) -> list[ShardInfo]:
        response = self._unary(address, "ListShards", pb.ListShardsRequest(), idempotent=retry)
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
            addresses = self.addresses  # as the refresh just resolved them
            address = address or addresses[shard % len(addresses)]
        elif address not in self.addresses:
            raise ValueError(f"address: expected one of {self.addresses}, got {address!r}")
        info = wire.shard_info_from_proto(self._unary(address, "CreateShard", request, idempotent=exist_ok))
        with self._lock:
            self._shard_map.setdefault(shard, _Route(address, (address,)))
        return info

    def get_shard(self, shard: int) -> ShardInfo:
        request = self._build(pb.GetShardRequest, shard=shard)
        return wire.shard_info_from_proto(self._on_readers(shard, lambda a: self._once(a, "GetShard", request)))

    def list_shards(self) -> list[ShardInfo]:
        """Every shard of every server, by shard id (a shard held twice: the first server's view)."""
        merged: dict[int, ShardInfo] = {}
        for address in self._resolve() if self._dns else self.addresses:
            for info in self._list_on(address):
                merged.setdefault(info.shard, info)
        return [merged[shard] for shard in sorted(merged)]

    def seal_shard(self, shard: int) -> ShardInfo:
        """Seal ``shard`` (on its first holder); the next call for it maps it again, finding its sealed copies."""
        request = self._build(pb.SealShardRequest, shard=shard)
        info = wire.shard_info_from_proto(self._unary(self.locate(shard), "SealShard", request))
        with self._lock:
            self._shard_map.pop(shard, None)
        return info

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

        def attempt(address: str) -> list[tuple[int, int]]:
            try:
                stream = self._stub(address).ListSeqs(request, timeout=self.stream_timeout, metadata=self._metadata)
                return [(r.start, r.end) for response in stream for r in response.runs]
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return self._on_readers(shard, attempt)

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
        failover = _Failover(self, shard)
        while True:
            delivered = 0
            address = failover.address
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
                            failover.answered()
                            return
                        try:
                            received = wire.read_response_records(message)
                        except ValueError as exc:
                            raise DataLossError(grpc.StatusCode.DATA_LOSS, f"read: shard {shard}: {exc}") from None
                        failover.answered()
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
                failover.failed(exc, delivered=delivered > 0)  # on to the next holder, or a pause; or `exc` raised

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
