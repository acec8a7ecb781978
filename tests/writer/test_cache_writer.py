"""CacheWriter against real servers: async writes, backpressure, restarts, permanent errors."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.client import (
    AlreadyExistsError,
    CacheClient,
    CacheError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.targets.sampling import sample
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess, StreamLoad
from logitcache.writer import CacheWriter, WriterClosedError, sequence_seed
from tests.server.helpers import running_server

V = 500
T = 16
SAMPLER = SamplerConfig(rounds=20)


def _silent_port() -> socket.socket:
    """A socket bound to a free port and never listening, held for the test: connections to it are refused."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    return silent


def _batch(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = lm_like_logits(b * T, V, generator=gen).reshape(b, T, V)
    return torch.randint(0, V, (b, T), generator=gen), logits


def _check_stored(client: CacheClient, shard: int, expected_ids: dict[int, torch.Tensor]) -> None:
    assert client.list_seqs(shard).tolist() == sorted(expected_ids)
    for seq, data in client.read(shard, seqs=sorted(expected_ids)):
        record = records.decode(data)
        np.testing.assert_array_equal(record.input_ids, expected_ids[seq].numpy())
        assert (np.add.reduceat(record.values, record.offsets[:-1]) == SAMPLER.rounds).all()


def test_records_hold_exactly_what_the_sampler_drew(tmp_path: Path) -> None:
    ids, logits = _batch(3, seed=1)
    with running_server(tmp_path) as (_, client):
        with CacheWriter(client, 0, SAMPLER, seed=7, seq_len=T) as writer:
            writer.write([10, 11, 12], ids, logits)
        # each seq drawn from its own generator, seeded by (seed, shard, seq) only
        expected = [
            sample(logits[row], SAMPLER, torch.Generator().manual_seed(sequence_seed(7, 0, seq)))
            for row, seq in enumerate([10, 11, 12])
        ]
        stored = [SparseTargets.from_record(records.decode(d)) for _, d in client.read(0, seqs=[10, 11, 12])]
        for got, want in zip(stored, expected, strict=True):
            assert torch.equal(got.token_ids, want.token_ids)
            assert torch.equal(got.values, want.values)
            assert torch.equal(got.offsets, want.offsets)
        stats = writer.stats()
        assert (stats.records_written, stats.positions_acked, stats.pending_records) == (3, 3 * T, 0)
        assert stats.bytes_per_position == pytest.approx(
            sum(map(len, (d for _, d in client.read(0, seqs=[10, 11, 12])))) / (3 * T)
        )
        assert client.get_shard(0).manifest == ShardManifest.for_sampler(SAMPLER, V, seq_len=T)


def test_write_returns_before_any_ack_and_flush_waits_for_them(tmp_path: Path) -> None:
    server: ServerProcess | None = ServerProcess(tmp_path, http=False)
    assert server is not None
    port = server.port
    client = CacheClient(server.address, timeout=10)
    try:
        ids, logits = _batch(4, seed=2)
        writer = CacheWriter(client, 0, SAMPLER, vocab_size=V)  # the shard exists from here on
        server.stop()  # nobody listens: no write can be acknowledged
        started = time.perf_counter()
        writer.write(range(4), ids, logits)
        assert time.perf_counter() - started < 5  # returned although nothing can be acked
        assert writer.stats().pending_records == 4
        server = ServerProcess(tmp_path, "--grpc", f"127.0.0.1:{port}", http=False)
        writer.close()
        assert writer.stats().pending_records == 0
        _check_stored(client, 0, {i: ids[i] for i in range(4)})
    finally:
        client.close()
        if server is not None:
            server.stop()


def test_backpressure_blocks_write_and_bounds_pending_records(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, http=False)  # it picks its port; restarts take the same one again
    port = server.port
    client = CacheClient(server.address, timeout=10)
    try:
        writer = CacheWriter(
            client, 0, SAMPLER, vocab_size=V, batch_records=2, max_pending_writes=2, max_inflight_batches=3
        )
        server.stop()
        ids, logits = _batch(2, seed=3)
        calls = 0
        peak = 0

        def produce() -> None:
            nonlocal calls, peak
            for i in range(20):
                writer.write([2 * i, 2 * i + 1], ids, logits)
                calls += 1
                peak = max(peak, writer.stats().pending_records)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        deadline = time.monotonic() + 60
        while writer.stats().blocked_writes == 0:  # write() blocks: the queue is full and nothing is acked
            assert producer.is_alive(), "write() returned every time: no backpressure"
            assert time.monotonic() < deadline, "write() never blocked on backpressure"
            producer.join(timeout=0.05)
        # at most: 3 batches of 2 records in flight, 2 calls of 2 queued, 1 call being packed, 1 blocked
        assert calls <= 6
        assert writer.stats().pending_records <= 2 * (3 + 2 + 1 + 1)
        server = ServerProcess(tmp_path, "--grpc", f"127.0.0.1:{port}", http=False)
        producer.join(timeout=60)
        assert not producer.is_alive()
        writer.close()
        assert peak <= 14
        _check_stored(client, 0, {seq: ids[seq % 2] for seq in range(40)})
    finally:
        client.close()
        server.stop()


def test_a_server_killed_mid_run_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, http=False)  # it picks its port; restarts take the same one again
    port = server.port
    client = CacheClient(server.address, timeout=10)
    expected: dict[int, torch.Tensor] = {}
    try:
        with CacheWriter(client, 0, SAMPLER, batch_records=2, retry_timeout=60) as writer:
            for step in range(12):
                ids, logits = _batch(3, seed=100 + step)
                writer.write([3 * step, 3 * step + 1, 3 * step + 2], ids, logits)
                expected.update({3 * step + i: ids[i] for i in range(3)})
                if step in (3, 8):  # SIGKILL, then a new server on the same data directory and port
                    server.stop()
                    server = ServerProcess(tmp_path, "--grpc", f"127.0.0.1:{port}", http=False)
        stats = writer.stats()
        assert stats.records_written + stats.records_unchanged >= len(expected)
        assert stats.retries >= 1
        _check_stored(client, 0, expected)
        assert client.get_shard(0).sequences == len(expected)
    finally:
        client.close()
        server.stop()


def test_a_sealed_shard_surfaces_at_the_next_call(tmp_path: Path) -> None:
    ids, logits = _batch(2, seed=4)
    with running_server(tmp_path) as (_, client):
        writer = CacheWriter(client, 0, SAMPLER, vocab_size=V)
        writer.write([0, 1], ids, logits)
        writer.flush()
        client.seal_shard(0)
        writer.write([2, 3], ids, logits)
        with pytest.raises(FailedPreconditionError, match="sealed"):
            writer.flush()
        with pytest.raises(FailedPreconditionError, match="sealed"):
            writer.write([4, 5], ids, logits)  # the error stays: nothing more is sent
        with pytest.raises(FailedPreconditionError):
            writer.close()
        assert client.list_seqs(0).tolist() == [0, 1]


def test_a_conflicting_record_is_raised_not_swallowed(tmp_path: Path) -> None:
    ids, logits = _batch(2, seed=5)
    other_ids, other_logits = _batch(2, seed=6)
    with running_server(tmp_path) as (_, client):
        with CacheWriter(client, 0, SAMPLER) as writer:
            writer.write([0, 1], ids, logits)
        with pytest.raises(AlreadyExistsError), CacheWriter(client, 0, SAMPLER) as writer:
            writer.write([1, 2], other_ids, other_logits)  # seq 1 with other bytes: a conflict
        np.testing.assert_array_equal(records.decode(next(client.read(0, seqs=[1]))[1]).input_ids, ids[1].numpy())


def test_a_shard_with_another_manifest_is_refused_at_once(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, ShardManifest(vocab_size=V, method="sampled", rounds=50))
        with pytest.raises(FailedPreconditionError, match="different manifest"):
            CacheWriter(client, 0, SAMPLER, vocab_size=V)


@pytest.mark.parametrize(
    ("seqs", "ids_shape", "logits_shape", "match"),
    [
        ([0, 1], (2, T), (2, T), "shape \\[B, T, V\\]"),
        ([0, 1], (2, T + 1), (2, T, V), "input_ids: expected shape"),
        ([0], (2, T), (2, T, V), "seq_ids: expected 2 ids"),
        ([3, 3], (2, T), (2, T, V), "distinct"),
        ([0, 1], (2, T), (2, T, V + 1), "V=500"),
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(
    tmp_path: Path, seqs: list[int], ids_shape: tuple[int, ...], logits_shape: tuple[int, ...], match: str
) -> None:
    with running_server(tmp_path) as (_, client):
        with CacheWriter(client, 0, SAMPLER, vocab_size=V) as writer:
            with pytest.raises(ValueError, match=match):
                writer.write(seqs, torch.zeros(ids_shape, dtype=torch.int64), torch.zeros(logits_shape))
            with pytest.raises(ValueError, match="token ids in \\[0, V=500\\)"):
                writer.write([0, 1], torch.full((2, T), V, dtype=torch.int64), torch.zeros(2, T, V))
            assert writer.stats().pending_records == 0
        assert client.get_shard(0).sequences == 0


def test_an_exception_in_the_with_block_stops_the_writer_without_hanging(tmp_path: Path) -> None:
    silent = _silent_port()  # nobody listens: a flush would wait for the retry budget
    client = CacheClient(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1)
    ids, logits = _batch(1, seed=8)
    writer = CacheWriter(client, 0, SAMPLER)
    writer.manifest = ShardManifest.for_sampler(SAMPLER, V)  # skip creating the shard (no server)
    started = time.perf_counter()

    def training_loop() -> None:
        with writer:
            writer.write([0], ids, logits)
            raise RuntimeError("the training loop broke")

    with pytest.raises(RuntimeError, match="the training loop broke"):
        training_loop()
    assert time.perf_counter() - started < 10
    with pytest.raises(WriterClosedError):
        writer.write([1], ids, logits)
    client.close()
    silent.close()


def test_invalid_argument_from_the_server_is_permanent(tmp_path: Path) -> None:
    ids, logits = _batch(1, seed=9)
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, ShardManifest(vocab_size=V, method="sampled", rounds=20, seq_len=T + 1))
        writer = CacheWriter(client, 0, SAMPLER)
        writer.manifest = ShardManifest.for_sampler(SAMPLER, V)  # the writer believes any seq_len goes
        writer.write([0], ids, logits)
        with pytest.raises((InvalidArgumentError, FailedPreconditionError), match="seq_len"):
            writer.close()
        assert client.get_shard(0).sequences == 0


def test_a_hung_server_fails_the_writer_within_its_retry_budget(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, http=False)
    client = CacheClient(server.address, timeout=10)
    try:
        writer = CacheWriter(client, 0, SAMPLER, vocab_size=V, ack_timeout=1.0, retry_timeout=3.0)
        server.proc.send_signal(signal.SIGSTOP)  # alive, connected, and silent
        ids, logits = _batch(2, seed=30)
        writer.write([0, 1], ids, logits)
        started = time.perf_counter()
        with pytest.raises(CacheError):
            writer.close()
        assert time.perf_counter() - started < 30
        assert writer.stats().retries >= 1
    finally:
        server.proc.send_signal(signal.SIGCONT)
        client.close()
        server.stop()


def test_the_retry_budget_counts_only_the_current_outage(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, http=False)  # it picks its port; restarts take the same one again
    port = server.port
    client = CacheClient(server.address, timeout=10)
    try:
        with CacheWriter(client, 0, SAMPLER, vocab_size=V, retry_timeout=1.5) as writer:
            for outage in range(2):  # two short outages, further apart than the budget
                server.stop()
                server = ServerProcess(tmp_path, "--grpc", f"127.0.0.1:{port}", http=False)
                time.sleep(2.0)
                ids, logits = _batch(2, seed=20 + outage)
                writer.write([2 * outage, 2 * outage + 1], ids, logits)
                writer.flush()
        assert client.list_seqs(0).tolist() == [0, 1, 2, 3]
    finally:
        client.close()
        server.stop()


def test_a_busy_server_is_waited_out_not_a_failure(tmp_path: Path) -> None:
    """RESOURCE_EXHAUSTED with a pushback (here: the server at its call bound) is retried; the data gets in."""
    server = ServerProcess(tmp_path, "--max-concurrent-calls", "2", http=False)
    load = StreamLoad(server.address)
    try:
        with CacheClient(server.address, timeout=10) as client:
            client.create_shard(0, ShardManifest.for_sampler(SAMPLER, V))
            load.open_idle([(0, 1000 + i, _record(i)) for i in range(2)], [])  # both slots taken, idle
            ids, logits = _batch(2, seed=9)

            def free_the_slots() -> None:  # once the writer was refused, the idle streams leave
                server.wait_for_log(r"RESOURCE_EXHAUSTED: .*--max-concurrent-calls")
                load.close()

            freeing = threading.Thread(target=free_the_slots)
            freeing.start()
            with CacheWriter(client, 0, SAMPLER, retry_timeout=120) as writer:
                writer.write([0, 1], ids, logits)  # waits out the refusals
                writer.flush(timeout=60)
            freeing.join()
            _check_stored(client, 0, {0: ids[0], 1: ids[1], 1000: _ids(0), 1001: _ids(1)})
    finally:
        server.stop()


def _ids(seed: int) -> torch.Tensor:
    return _batch(1, seed=1000 + seed)[0][0]


def _record(seed: int) -> bytes:
    ids, logits = _batch(1, seed=1000 + seed)
    return records.encode(ids[0], sample(logits[0], SAMPLER))
