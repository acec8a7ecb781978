"""Running the server: gRPC (:mod:`.grpc_service`) and REST (:mod:`.http`) on one asyncio event loop.

* :func:`serve` is ``logitcache serve``: it runs until SIGTERM / SIGINT.
* :class:`ServerThread` runs the same server on a background thread of the calling process (the
  tests, the demo); :class:`CacheServer` is the server itself, for code that has an event loop.

On SIGTERM the health service turns NOT_SERVING, no new calls are accepted, and in-flight calls
get ``shutdown_grace_seconds`` to finish; then they are cancelled. Batches already handed to a
commit are committed before the store closes; a write batch that committed before its stream was
cancelled is stored, and acknowledged if the acknowledgement still got out. An unacknowledged
batch may or may not be stored, which is why retries of identical bytes are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from logitcache.server.commits import Committer
from logitcache.server.grpc_service import SERVICE_NAME, Limits, LogitCacheService, service_handler
from logitcache.server.http.app import create_app, load_tokenizers
from logitcache.server.http.deps import LoadedTokenizer
from logitcache.server.settings import ServerSettings
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["CacheServer", "ServerThread", "serve"]

log = logging.getLogger("logitcache.server")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the server's runner owns SIGTERM / SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(address: str, what: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        hint = _IN_USE.get(exc.errno or 0, "")
        raise OSError(f"cannot listen for {what} on {address}: {exc.strerror}{hint}") from exc
    return sock


_IN_USE = {errno.EADDRINUSE: " (another server is running there? pick another port, or 0 for any free one)"}


class CacheServer:
    """gRPC and, unless ``settings.http`` is ``off``, REST over one store. Start and stop it on an event loop."""

    def __init__(self, settings: ServerSettings, *, tokenizers: Sequence[Any] | None = None) -> None:
        """``tokenizers``: tokenizer objects to use instead of loading ``settings.tokenizer`` (the demo's)."""
        self.settings = settings
        # first: a bad --tokenizer fails before the store is opened
        self._tokenizers = (
            load_tokenizers(settings.tokenizer)
            if tokenizers is None
            else [
                t if isinstance(t, LoadedTokenizer) else LoadedTokenizer.of(t, f"tokenizer {i}")
                for i, t in enumerate(tokenizers)
            ]
        )
        self.store = Store(
            settings.data_dir,
            initial_map_size=settings.initial_map_bytes,
            max_map_size=settings.max_shard_bytes,
            min_free_bytes=settings.min_free_bytes,
        )
        self.stats = ServerStats()
        self.stats.attach(self.store)
        workers = settings.worker_threads
        self._reads = ThreadPoolExecutor(workers, thread_name_prefix="lmdb-read")
        self._commits = ThreadPoolExecutor(max(4, workers), thread_name_prefix="lmdb-commit")  # mostly in fsync
        self.committer = Committer(self._commits, settings.max_pending_commit_bytes)
        self.port = 0
        self.http_port: int | None = None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start; ``port`` (and ``http_port``) are the bound ports (port 0 picks a free one)."""
        s = self.settings
        token = s.auth_token.get_secret_value() if s.auth_token else None
        self.service = LogitCacheService(
            self.store,
            self.stats,
            Limits(s.max_concurrent_calls, s.max_stream_inflight_bytes, s.max_message_bytes),
            reads=self._reads,
            commits=self._commits,
            committer=self.committer,
            auth_token=token,
        )
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers((service_handler(self.service),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        credentials = None
        if s.tls_cert is not None or s.tls_key is not None:
            if s.tls_cert is None or s.tls_key is None:
                raise ValueError("tls: expected both tls_cert and tls_key")
            credentials = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
        if not s.grpc.endswith(":0"):  # gRPC's own bind error is a C-core log line and a bare RuntimeError
            _bind(s.grpc, "gRPC").close()
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(s.grpc)
            else:
                self.port = self.server.add_secure_port(s.grpc, credentials)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {s.grpc}: the address is in use or not local")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.http != "off":
            sock = _bind(s.http, "HTTP")
            self.http_port = sock.getsockname()[1]
            app = create_app(
                self.store,
                self.stats,
                auth_token=token,
                reads_need_token=s.http_reads_need_token,
                tokenizers=self._tokenizers,
                grpc_address=f"{s.grpc.rpartition(':')[0]}:{self.port}",
            )
            self._http = _Uvicorn(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
            self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
            while not self._http.started:
                if self._http_task.done():
                    self._http_task.result()
                    raise RuntimeError(f"the HTTP server did not start on {s.http}")
                await asyncio.sleep(0.01)
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls, give in-flight ones ``grace`` seconds, commit what was handed over, close the store."""
        with contextlib.suppress(AttributeError):  # never started
            await self.health.enter_graceful_shutdown()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        with contextlib.suppress(AttributeError):
            await self.server.stop(grace)
        await self.committer.wait_idle()
        self._reads.shutdown(wait=True)
        self._commits.shutdown(wait=True)
        self.store.close()


class ServerThread:
    """A :class:`CacheServer` on an event loop in a background thread. ``start()`` returns once it serves."""

    def __init__(self, settings: ServerSettings, *, tokenizers: Sequence[Any] | None = None) -> None:
        self.settings = settings
        self.server = CacheServer(settings, tokenizers=tokenizers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="logitcache-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int | None:
        return self.server.http_port

    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def stats(self) -> ServerStats:
        return self.server.stats

    @property
    def address(self) -> str:
        return f"{self.settings.grpc.rpartition(':')[0]}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        except BaseException:
            self.stop(0)
            raise
        return self

    def stop(self, grace: float | None = 0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop(0)


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM / SIGINT. Returns the process exit code."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return asyncio.run(_serve(settings))


async def _serve(settings: ServerSettings) -> int:
    server = CacheServer(settings)
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    scheme = "grpcs" if settings.tls_cert else "grpc"
    log.info(
        "serving %s://%s:%d (data dir %s, %d shard(s), auth %s)",
        scheme,
        settings.grpc.rpartition(":")[0],
        server.port,
        server.store.data_dir,
        len(server.store.shards()),
        "on" if settings.auth_token else "off",
    )
    if server.http_port is not None:
        log.info(
            "serving http://%s:%d (REST API, /metrics, viewer at /)", settings.http.rpartition(":")[0], server.http_port
        )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):

        def on_signal(signum: int = signum) -> None:
            log.info(
                "%s received: stopping (grace %.0f s)", signal.Signals(signum).name, settings.shutdown_grace_seconds
            )
            stopping.set()

        loop.add_signal_handler(signum, on_signal)
    await stopping.wait()
    await server.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
    return 0
