"""Fault injection: SIGKILL during concurrent writes (10 cycles), a full shard, SIGTERM during a write stream."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logitcache.client import CacheClient, CacheError, ResourceExhaustedError
from logitcache.core import records
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, make_records

STREAMS = 4
CYCLES = 10
BATCH = 4


def test_kill_9_during_concurrent_writes_loses_no_acked_record_and_leaves_no_half_batch(tmp_path: Path) -> None:
    pool = make_records(32, seed=7)  # payloads, reused under ever new seqs
    rnd = random.Random(0)
    sent: dict[int, list[list[tuple[int, bytes]]]] = {shard: [] for shard in range(STREAMS)}
    acked: dict[int, list[list[tuple[int, bytes]]]] = {shard: [] for shard in range(STREAMS)}
    next_seq = dict.fromkeys(range(STREAMS), 0)
    for cycle in range(CYCLES):
        server = ServerProcess(tmp_path, http=False)  # port 0: the bound port is read back
        try:
            with CacheClient(server.address, timeout=10, retries=0) as admin:
                for shard in range(STREAMS):
                    admin.create_shard(shard, MANIFEST, exist_ok=True)
            stop = threading.Event()

            def stream(shard: int, stop: threading.Event, address: str) -> None:
                with CacheClient(address, timeout=10, retries=0) as client:
                    while not stop.is_set():
                        batch = [
                            (next_seq[shard] + i, pool[(next_seq[shard] + i) % len(pool)][1]) for i in range(BATCH)
                        ]
                        next_seq[shard] += BATCH
                        sent[shard].append(batch)
                        try:
                            client.write(shard, batch, batch_records=BATCH)
                        except CacheError:
                            return  # the server died: this batch may or may not have committed
                        acked[shard].append(batch)

            threads = [threading.Thread(target=stream, args=(shard, stop, server.address)) for shard in range(STREAMS)]
            for t in threads:
                t.start()
            time.sleep(rnd.uniform(0.2, 1.0))  # a random moment
            server.proc.kill()  # kill -9
            server.proc.wait(timeout=30)
            stop.set()
            for t in threads:
                t.join(timeout=30)
        finally:
            server.stop()
        assert any(acked.values()), f"cycle {cycle}: nothing was acknowledged before the kill"

    server = ServerProcess(tmp_path, http=False)  # port 0: the bound port is read back
    try:
        with CacheClient(server.address, timeout=30) as client:
            for shard in range(STREAMS):
                stored = dict(client.read(shard, ranges=[(0, next_seq[shard])]))
                for data in stored.values():
                    records.decode(data)  # every stored record is whole: checksum and structure
                for batch in acked[shard]:  # every acknowledged record survived, byte for byte
                    assert all(stored.get(seq) == data for seq, data in batch), f"shard {shard}: lost {batch[0][0]}"
                for batch in sent[shard]:  # a batch is one transaction: all of it or none of it
                    present = [seq in stored for seq, _ in batch]
                    assert all(present) or not any(present), f"shard {shard}: half of batch {batch[0][0]} stored"
                assert len(stored) == sum(len(b) for b in sent[shard] if b[0][0] in stored)
    finally:
        server.stop()


def test_a_full_shard_is_resource_exhausted_and_reads_go_on(tmp_path: Path) -> None:
    limit = 1 << 20  # a 1 MiB map: the smallest the server accepts
    server = ServerProcess(tmp_path, "--max-shard-bytes", str(limit), env={"LOGITCACHE_INITIAL_MAP_BYTES": str(limit)})
    try:
        items = make_records(1200, seed=3)
        stored: list[tuple[int, bytes]] = []
        with server.client() as client:
            client.create_shard(0, MANIFEST)

            def fill() -> None:
                for at in range(0, len(items), 8):
                    client.write(0, items[at : at + 8])
                    stored.extend(items[at : at + 8])

            with pytest.raises(ResourceExhaustedError, match="shard 0"):
                fill()
            assert stored  # some batches fit before the limit
            assert client.get_shard(0).sequences == len(stored)  # the refused batch left nothing
            assert dict(client.read(0, seqs=[seq for seq, _ in stored])) == dict(stored)  # reads go on
            assert client.stats().errors_by_code["RESOURCE_EXHAUSTED"] >= 1
    finally:
        server.stop()


def test_sigterm_drains_in_flight_writes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    items = make_records(64, seed=4)
    batches = [items[at : at + 4] for at in range(0, len(items), 4)]
    acked: list[int] = []
    first_ack = threading.Event()
    failure: list[BaseException] = []
    try:
        with server.client() as client:
            client.create_shard(0, MANIFEST)

            def slow_batches() -> Iterator[list[tuple[int, bytes]]]:
                for batch in batches:
                    yield batch
                    time.sleep(0.05)

            def stream() -> None:
                try:
                    for ack in client.write_batches(0, slow_batches()):
                        acked.append(ack.batch_id)
                        first_ack.set()
                except CacheError as exc:  # the server went away after draining
                    failure.append(exc)

            writer = threading.Thread(target=stream)
            writer.start()
            assert first_ack.wait(30)
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=60) == 0  # a clean exit after the drain
            writer.join(timeout=30)
    finally:
        server.stop()
    assert acked == list(range(len(acked)))  # acks in order, none skipped
    again = ServerProcess(tmp_path)
    try:
        with again.client() as client:
            present = {seq for seq, _ in client.read(0, ranges=[(0, 64)])}
        for i, batch in enumerate(batches):
            seqs = {seq for seq, _ in batch}
            if i in acked:
                assert seqs <= present, f"acknowledged batch {i} lost"
            else:
                assert seqs <= present or not seqs & present, f"batch {i} half stored"
    finally:
        again.stop()
