"""``logitcache serve``: start gRPC and REST, log what they do, stop gracefully on SIGTERM / SIGINT.

The gRPC service and the REST app (uvicorn, in a thread of the same process) share one store.
On SIGTERM the health service turns NOT_SERVING, no new calls are accepted, and in-flight calls
get ``shutdown_grace_seconds`` to finish; then they are cancelled. A write batch that committed
before its stream was cancelled is stored, and acknowledged if the acknowledgement still got out;
an unacknowledged batch may or may not be stored, which is why retries of identical bytes are
no-ops. Then the store closes.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from logitcache.server.grpc_service import create_server
from logitcache.server.http.app import create_app, load_tokenizer
from logitcache.server.settings import ServerSettings

__all__ = ["HttpServer", "serve"]

log = logging.getLogger("logitcache.server")


class HttpServer:
    """uvicorn serving ``app`` from a thread, on a socket bound at construction (port 0 works)."""

    def __init__(self, app: FastAPI, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, int(port)))
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="http", daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM / SIGINT. Returns the process exit code."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    running = create_server(settings)
    http: HttpServer | None = None
    if settings.http != "off":
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        app = create_app(
            running.store,
            running.stats,
            auth_token=token,
            reads_need_token=settings.http_reads_need_token,
            tokenizer=load_tokenizer(settings.tokenizer),
        )
        http = HttpServer(app, settings.http)
    running.server.start()
    if http is not None:
        http.start()
    scheme = "grpcs" if settings.tls_cert else "grpc"
    log.info(
        "serving %s://%s:%d (data dir %s, %d shard(s), auth %s)",
        scheme,
        settings.grpc.rpartition(":")[0],
        running.port,
        running.store.data_dir,
        len(running.store.shards()),
        "on" if settings.auth_token else "off",
    )
    if http is not None:
        log.info("serving http://%s:%d (REST API, /metrics, viewer at /)", http.host, http.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping (grace %.0f s)", signal.Signals(signum).name, settings.shutdown_grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    if http is not None:
        http.stop()
    running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
    return 0
