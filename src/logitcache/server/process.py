"""``python -m logitcache serve`` as a child process on free loopback ports, its ports read from its log.

The tests, benchmarks and experiments start their real servers with it (``stop()`` is SIGKILL, as
the crash tests need; ``proc.terminate()`` is the graceful SIGTERM).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from logitcache.client import CacheClient


class ServerProcess:
    """A server on a free gRPC port and, with ``http``, a free HTTP port. ``extra`` flags override."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None, http: bool = True) -> None:
        args = [sys.executable, "-m", "logitcache", "serve", "--grpc", "127.0.0.1:0"]
        args += ["--http", "127.0.0.1:0" if http else "off", *extra]
        full_env = {**os.environ, **(env or {})}
        if "LOGITCACHE_DATA_DIR" not in full_env:
            args += ["--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=full_env)
        self.log: list[str] = []
        self.port, self.http_port = self._wait_for_ports(http)
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _wait_for_ports(self, http: bool) -> tuple[int, int | None]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        grpc_port = http_port = None
        while time.monotonic() < deadline and (grpc_port is None or (http and http_port is None)):
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited early: {''.join(self.log)}")
            self.log.append(line)
            if found := re.search(r"serving grpcs?://[\d.]+:(\d+)", line):
                grpc_port = int(found.group(1))
            if found := re.search(r"serving http://[\d.]+:(\d+)", line):
                http_port = int(found.group(1))
        if grpc_port is None or (http and http_port is None):
            raise RuntimeError("server did not report its ports in time")
        return grpc_port, http_port

    def _read_rest(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        for line in stream:
            self.log.append(line)

    def client(self, token: str | None = None, *, timeout: float = 30) -> CacheClient:
        return CacheClient(self.address, timeout=timeout, auth_token=token)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
