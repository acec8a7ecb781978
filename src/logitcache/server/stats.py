"""Server-wide counters and latency histograms, shared by the gRPC service and the REST app.

:class:`ServerStats` keeps plain totals (what ``GetStats`` answers) and, in a registry of its own
(several servers may live in one process, as in the tests), Prometheus histograms of the
write-acknowledgement and read-batch latencies. Once attached to the store, ``/metrics`` also
exports the totals, the errors by status code, per-shard sizes and damage, and the data
directory's free space.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from logitcache.server.store import Store

__all__ = ["ServerStats"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.registry = CollectorRegistry(auto_describe=True)
        self.write_ack_seconds = Histogram(
            "logitcache_write_ack_seconds",
            "Time from receiving a write batch to acknowledging it (validation + durable commit)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.read_batch_seconds = Histogram(
            "logitcache_read_batch_seconds",
            "Time to fetch, verify and frame one Read response message",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

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

    def attach(self, store: Store) -> None:
        """Export the totals, and ``store``'s shards and free space, at ``/metrics``."""
        self.registry.register(_TotalsCollector(self, store))


class _TotalsCollector(Collector):
    def __init__(self, stats: ServerStats, store: Store) -> None:
        self._stats = stats
        self._store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats
        with s._lock:
            totals = [
                ("records_written", "Records stored", s.records_written),
                ("positions_written", "Positions in the records stored", s.positions_written),
                ("bytes_written", "Bytes of the records stored", s.bytes_written),
                ("records_read", "Records served", s.records_read),
                ("positions_read", "Positions in the records served", s.positions_read),
                ("bytes_read", "Bytes of the records served", s.bytes_read),
            ]
            errors = dict(s.errors)
        for name, doc, value in totals:
            yield CounterMetricFamily(f"logitcache_{name}", doc, value=value)
        by_code = CounterMetricFamily("logitcache_errors", "Failed calls by status code", labels=["code"])
        for code, count in sorted(errors.items()):
            by_code.add_metric([code], count)
        yield by_code
        gauges = [
            ("sequences", "Records in a shard"),
            ("positions", "Positions in a shard"),
            ("disk_bytes", "A shard's size on disk"),
            ("damaged", "1 if the shard's files are damaged (see GetShard / logitcache verify)"),
            ("damaged_records", "Records of a shard that failed their checksum when read"),
        ]
        families = [GaugeMetricFamily(f"logitcache_shard_{name}", doc, labels=["shard"]) for name, doc in gauges]
        for info in self._store.infos():
            values = (info.sequences, info.positions, info.disk_bytes, info.damage is not None, info.damaged_records)
            for family, value in zip(families, values, strict=True):
                family.add_metric([str(info.shard)], float(value))
        yield from families
        yield GaugeMetricFamily(
            "logitcache_data_dir_free_bytes",
            "Free space of the data directory's file system",
            value=self._store.disk.free(),
        )
