"""``logitcache serve``: start the server, log what it does, stop gracefully on SIGTERM / SIGINT.

On SIGTERM the health service turns NOT_SERVING, no new calls are accepted, and in-flight calls
get ``shutdown_grace_seconds`` to finish: a write batch whose transaction commits in that time
is acknowledged; one that does not is neither stored nor acknowledged. Then the store closes.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from logitcache.server.grpc_service import create_server
from logitcache.server.settings import ServerSettings

__all__ = ["serve"]

log = logging.getLogger("logitcache.server")


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM / SIGINT. Returns the process exit code."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    running = create_server(settings)
    running.server.start()
    scheme = "grpcs" if settings.tls_cert else "grpc"
    host = settings.grpc.rpartition(":")[0]
    log.info(
        "serving %s://%s:%d (data dir %s, %d shard(s), auth %s)",
        scheme,
        host,
        running.port,
        running.store.data_dir,
        len(running.store.shards()),
        "on" if settings.auth_token else "off",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping (grace %.0f s)", signal.Signals(signum).name, settings.shutdown_grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
    return 0
