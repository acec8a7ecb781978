"""CacheClient.write_batches: typed acknowledgements and typed counters, and cancelling a stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from logitcache.client import BatchAck, CancelledError, StatsSnapshot
from tests.server.helpers import MANIFEST, SEQ_LEN, make_records, running_server


def test_acks_and_stats_are_the_projects_types(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        items = make_records(5)
        acks = list(client.write_batches(0, [items[:3], items[3:]]))
        assert acks == [BatchAck(0, 0, 3, 0, 3 * SEQ_LEN), BatchAck(1, 0, 2, 0, 2 * SEQ_LEN)]
        stats = client.stats()
        assert isinstance(stats, StatsSnapshot)
        assert (stats.records_written, stats.shards) == (5, 1)
        assert isinstance(stats.errors_by_code, dict)


def test_a_stream_cancelled_before_it_opens_sends_nothing(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        stream = client.write_batches(0, [make_records(2)])
        stream.cancel()
        with pytest.raises(CancelledError):
            list(stream)
        assert client.get_shard(0).sequences == 0


def test_a_stream_is_cancelled_from_another_thread(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        items = make_records(4)
        more: queue.Queue[list[tuple[int, bytes]] | None] = queue.Queue()
        more.put(items[:2])

        def batches() -> Iterator[list[tuple[int, bytes]]]:
            while (batch := more.get()) is not None:
                yield batch

        stream = client.write_batches(0, batches())
        assert next(stream).written == 2  # open, and waiting for the next batch
        threading.Timer(0.2, stream.cancel).start()
        with pytest.raises(CancelledError):
            next(stream)
        more.put(None)
        assert client.list_seqs(0).tolist() == [0, 1]
