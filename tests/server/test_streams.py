"""Many concurrent streams against one real server process: idle streams cost the server nothing,
and past its bound a call is refused at once, never queued.

The idle streams are held by :class:`~logitcache.testing.StreamLoad`, an asyncio client
on its own event loop in a thread of the test process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from logitcache.client import CacheClient, ResourceExhaustedError
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.targets.sampling import sample_random
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess, StreamLoad
from logitcache.writer import CacheWriter
from tests.server.helpers import MANIFEST, SEQ_LEN, VOCAB, make_records

LONG = ShardManifest(vocab_size=VOCAB, method="sampled", rounds=20)  # any length
READ_SHARD, WRITE_SHARDS = 100, range(8)


def _long_records(count: int, length: int = 4000) -> list[tuple[int, bytes]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (seq, records.encode(torch.randint(0, VOCAB, (length,), generator=gen), sample_random(
            lm_like_logits(length, VOCAB, generator=gen), 20, generator=gen)))
        for seq in range(count)
    ]  # fmt: skip


def _idle(address: str, writes: int, reads: int) -> StreamLoad:
    """``writes`` Write streams that sent a record, got its ack and stay open, and ``reads`` Read
    streams that took their first message of 64 and read no more."""
    load = StreamLoad(address)
    data = make_records(1)[0][1]
    read = pb.ReadRequest(shard=READ_SHARD, ranges=[pb.SeqRange(start=0, end=64)], max_message_bytes=1)
    load.open_idle([(WRITE_SHARDS[i % len(WRITE_SHARDS)], 10_000 + i, data) for i in range(writes)], [read] * reads)
    return load


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, http=False)  # the default settings: --workers 16
    with proc.client() as client:
        for shard in WRITE_SHARDS:
            client.create_shard(shard, MANIFEST)
        client.create_shard(READ_SHARD, LONG)
        client.write(READ_SHARD, _long_records(64), batch_records=4)  # about 64 × 110 KB: more than a window
    yield proc
    proc.stop()


def test_256_idle_writes_and_256_unread_reads_leave_the_server_responsive(server: ServerProcess) -> None:
    idle = _idle(server.address, writes=256, reads=256)
    try:
        with CacheClient(server.address, timeout=10, retries=0) as client:  # each call within 10 s, or it fails
            for _ in range(20):
                assert client.get_shard(0).sequences >= 1
                assert len(client.list_shards()) == len(WRITE_SHARDS) + 1
            assert [seq for seq, _ in client.read(READ_SHARD, seqs=[5, 3])] == [5, 3]
            fresh = make_records(4, seed=3, start=50_000)
            assert client.write(0, fresh).written == 4  # a new writer writes
            assert dict(client.read(0, seqs=[s for s, _ in fresh])) == dict(fresh)
        assert server.proc.poll() is None
    finally:
        idle.close()


def test_16_flushed_writers_do_not_freeze_the_server(server: ServerProcess) -> None:
    """The issue's reproduction: a 16-rank teacher job between batches, with the default --workers 16."""
    gen = torch.Generator().manual_seed(0)
    writers = [CacheWriter(CacheClient(server.address, timeout=10), 200 + rank) for rank in range(16)]
    try:
        for rank, writer in enumerate(writers):
            writer.write([rank], torch.randint(0, VOCAB, (1, SEQ_LEN), generator=gen), lm_like_logits(
                SEQ_LEN, VOCAB, generator=gen).unsqueeze(0))  # fmt: skip
            writer.flush(timeout=60)  # acknowledged; the stream stays open
        with CacheClient(server.address, timeout=10, retries=0) as client:
            assert client.get_shard(203).sequences == 1
            assert len(client.list_shards()) == len(WRITE_SHARDS) + 1 + 16
            assert next(iter(client.read(203, seqs=[3])))[0] == 3
            with CacheWriter(CacheClient(server.address, timeout=10), 216) as seventeenth:
                seventeenth.write([0], torch.randint(0, VOCAB, (1, SEQ_LEN), generator=gen), lm_like_logits(
                    SEQ_LEN, VOCAB, generator=gen).unsqueeze(0))  # fmt: skip
            assert client.get_shard(216).sequences == 1
    finally:
        for writer in writers:
            writer.close()


def test_past_the_call_bound_calls_are_refused_at_once(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, "--max-concurrent-calls", "8", http=False)
    try:
        with proc.client() as client:
            for shard in WRITE_SHARDS:
                client.create_shard(shard, MANIFEST)
            client.create_shard(READ_SHARD, LONG)
            client.write(READ_SHARD, _long_records(64), batch_records=4)
        idle = _idle(proc.address, writes=4, reads=4)  # the bound, all idle
        try:
            with CacheClient(proc.address, timeout=10, retries=0) as client:
                with pytest.raises(ResourceExhaustedError, match="--max-concurrent-calls") as refused:
                    client.get_shard(0)
                assert refused.value.retry_after is not None  # a pushback: retrying later can succeed
                with pytest.raises(ResourceExhaustedError):
                    client.write(0, make_records(1, start=7))
                with pytest.raises(ResourceExhaustedError):
                    list(client.read(0, seqs=[10_000]))
        finally:
            idle.close()
        with CacheClient(proc.address, timeout=10, retries=4, backoff=0.05) as client:  # freed: served again
            assert client.get_shard(0).sequences == 1
            assert client.stats().errors_by_code["RESOURCE_EXHAUSTED"] >= 3
    finally:
        proc.stop()


def test_past_the_pending_commit_bound_a_batch_is_refused_with_a_pushback(tmp_path: Path) -> None:
    proc = ServerProcess(
        tmp_path, "--max-pending-commit-bytes", str(1 << 20), "--max-stream-inflight-bytes", str(1 << 20), http=False
    )
    big = _long_records(32)  # about 130 KB each
    try:
        with proc.client() as admin:
            for shard in WRITE_SHARDS:
                admin.create_shard(shard, LONG)
        refused: list[ResourceExhaustedError] = []
        acked: dict[int, list[tuple[int, bytes]]] = {shard: [] for shard in WRITE_SHARDS}
        lock = threading.Lock()

        def writer(shard: int, start: int) -> None:
            batch = [(start + i, data) for i, (_, data) in enumerate(big[:6])]  # ~780 KB in one batch
            with CacheClient(proc.address, timeout=30, retries=0) as client:
                try:
                    client.write(shard, batch, batch_records=6)
                except ResourceExhaustedError as exc:
                    with lock:
                        refused.append(exc)
                    return
            with lock:
                acked[shard] += batch

        for round_ in range(20):  # 8 streams at once against a 1 MiB bound: some are refused
            threads = [threading.Thread(target=writer, args=(s, 1000 * round_)) for s in WRITE_SHARDS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if refused:
                break
        assert refused, "no batch was refused past the pending-commit bound"
        assert all("--max-pending-commit-bytes" in e.details and e.retry_after is not None for e in refused)
        with proc.client() as client:
            for shard, items in acked.items():  # what was acknowledged is stored, nothing else was hurt
                assert dict(client.read(shard, seqs=[seq for seq, _ in items])) == dict(items)
            # one stream pipelining batches past its in-flight bound (1 MiB): the server reads on as acks go out
            many = [(50_000 + i, data) for i, (_, data) in enumerate(big)]
            assert client.write(0, many, batch_records=4).written == len(many)
            assert dict(client.read(0, seqs=[seq for seq, _ in many])) == dict(many)
    finally:
        proc.stop()
