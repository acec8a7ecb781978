"""Server-wide counters (thread-safe): what was written and read, and errors by status code."""

from __future__ import annotations

import threading
import time
from collections import Counter

__all__ = ["ServerStats"]


class ServerStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.records_written = 0
        self.positions_written = 0
        self.bytes_written = 0
        self.records_read = 0
        self.positions_read = 0
        self.bytes_read = 0
        self.errors: Counter[str] = Counter()

    def wrote(self, records: int, positions: int, nbytes: int) -> None:
        with self._lock:
            self.records_written += records
            self.positions_written += positions
            self.bytes_written += nbytes

    def read(self, records: int, positions: int, nbytes: int) -> None:
        with self._lock:
            self.records_read += records
            self.positions_read += positions
            self.bytes_read += nbytes

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def uptime(self) -> float:
        return time.monotonic() - self.started
