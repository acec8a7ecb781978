"""A real ``logitcache serve`` process on a free loopback port, for the benchmarks that need one."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    """Start a server on ``data_dir`` (gRPC on a free port, no HTTP); return the process and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "logitcache", "serve", "--data-dir", str(data_dir), "--grpc", "127.0.0.1:0",
         "--http", "off", "--log-level", "INFO"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if time.monotonic() > deadline:
            break
        found = re.search(r"serving grpc://[\d.]+:(\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(found.group(1))
    proc.kill()
    raise RuntimeError("server did not start")
