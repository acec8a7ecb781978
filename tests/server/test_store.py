"""The LMDB store, used directly (real LMDB in a temporary directory)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from logitcache.core import records
from logitcache.core.manifest import ShardManifest, missing_seqs
from logitcache.server.errors import (
    CorruptRecordError,
    InvalidRequestError,
    ManifestError,
    RecordConflictError,
    SeqNotFoundError,
    ShardDamagedError,
    ShardExistsError,
    ShardNotFoundError,
    ShardSealedError,
    StoreError,
    StoreFullError,
)
from logitcache.server.store import Store
from tests.server.helpers import MANIFEST, SEQ_LEN, TOPK_MANIFEST, VOCAB, corrupt_stored, make_records


def _store(path: Path, **kwargs: int) -> Store:
    return Store(path, **kwargs)


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    items = make_records(10)
    store = _store(tmp_path)
    shard = store.create_shard(7, MANIFEST)
    result = shard.write_batch(items)
    assert (result.written, result.unchanged, result.positions) == (10, 0, 10 * SEQ_LEN)
    store.close()
    reopened = _store(tmp_path)
    shard = reopened.get(7)
    assert shard.manifest == MANIFEST
    assert [seq for seq, _ in reopened.shards()[0].seqs_page(0, 100)] == list(range(10))
    got = [pair for chunk in shard.read_seqs([3, 0, 9]) for pair in chunk]
    assert got == [items[3], items[0], items[9]]
    stats = shard.stats()
    assert (stats.sequences, stats.positions, stats.first_seq, stats.last_seq) == (10, 10 * SEQ_LEN, 0, 9)
    assert stats.record_bytes == sum(len(d) for _, d in items)
    reopened.close()


def test_ranges_chunks_and_missing(tmp_path: Path) -> None:
    items = make_records(12)
    store = _store(tmp_path)
    shard = store.create_shard(0, MANIFEST)
    shard.write_batch([items[i] for i in range(12) if i != 5])
    chunks = list(shard.read_range(2, 9, chunk_bytes=1))  # one record per chunk
    assert [c[0][0] for c in chunks] == [2, 3, 4, 6, 7, 8]
    assert list(shard.read_range(100, 200)) == []
    with pytest.raises(SeqNotFoundError, match="seq 5 is not in shard 0"):
        list(shard.read_seqs([4, 5]))
    with pytest.raises(SeqNotFoundError):
        shard.get(5)
    store.close()


def test_idempotent_retry_conflict_and_overwrite(tmp_path: Path) -> None:
    items = make_records(4)
    other = make_records(4, seed=1)
    store = _store(tmp_path)
    shard = store.create_shard(1, MANIFEST)
    shard.write_batch(items)
    retry = shard.write_batch(items)
    assert (retry.written, retry.unchanged) == (0, 4)
    with pytest.raises(RecordConflictError, match="seq 2 of shard 1 is stored with different bytes"):
        shard.write_batch([items[0], other[2]])
    assert shard.get(2) == items[2][1]
    replaced = shard.write_batch([other[2]], overwrite=True)
    assert replaced.written == 1
    assert shard.get(2) == other[2][1]
    stats = shard.stats()
    assert stats.record_bytes == sum(len(d) for _, d in items) - len(items[2][1]) + len(other[2][1])
    assert stats.positions == 4 * SEQ_LEN
    store.close()


def test_a_bad_record_rejects_the_whole_batch(tmp_path: Path) -> None:
    items = make_records(5)
    store = _store(tmp_path)
    shard = store.create_shard(2, MANIFEST)
    broken = bytearray(items[3][1])
    broken[-1] ^= 1
    with pytest.raises(InvalidRequestError, match="record for seq 3 is malformed: checksum"):
        shard.write_batch([items[0], items[1], (3, bytes(broken))])
    with pytest.raises(InvalidRequestError, match="appears twice"):
        shard.write_batch([items[0], items[0]])
    assert shard.stats().sequences == 0
    store.close()


def test_records_must_match_the_manifest(tmp_path: Path) -> None:
    store = _store(tmp_path)
    shard = store.create_shard(3, MANIFEST)
    with pytest.raises(ManifestError, match="method: the shard's manifest says 'sampled'"):
        shard.write_batch(make_records(1, topk=True))
    strict = store.create_shard(4, ShardManifest(vocab_size=VOCAB, method="sampled", rounds=50))
    with pytest.raises(ManifestError, match="rounds: the shard's manifest says 50, the record has 20"):
        strict.write_batch(make_records(1))
    longer = store.create_shard(5, ShardManifest(vocab_size=VOCAB, method="sampled", rounds=20, seq_len=64))
    with pytest.raises(ManifestError, match="seq_len"):
        longer.write_batch(make_records(1))
    topk = store.create_shard(6, TOPK_MANIFEST)
    assert topk.write_batch(make_records(2, topk=True)).written == 2
    store.close()


def test_shard_lifecycle_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create_shard(8, MANIFEST)
    with pytest.raises(ShardExistsError):
        store.create_shard(8, MANIFEST)
    assert store.create_shard(8, MANIFEST, exist_ok=True).shard_id == 8
    with pytest.raises(ManifestError, match="different manifest"):
        store.create_shard(8, TOPK_MANIFEST, exist_ok=True)
    with pytest.raises(ShardNotFoundError, match="shard 9 does not exist"):
        store.get(9)
    with pytest.raises(InvalidRequestError, match="shard: expected 0 <= shard < 2\\*\\*32"):
        store.get(2**32)
    shard = store.get(8)
    shard.write_batch(make_records(1))
    shard.seal()
    assert shard.sealed
    with pytest.raises(ShardSealedError, match="shard 8 is sealed"):
        shard.write_batch(make_records(1, start=1))
    store.close()
    assert _store(tmp_path).get(8).sealed


def test_the_map_grows_on_demand_up_to_the_limit(tmp_path: Path) -> None:
    items = make_records(60)  # ~1.5 KB each with the small vocabulary: use many
    big = [(seq, data) for seq, data in items]
    store = _store(tmp_path, initial_map_size=1 << 20, max_map_size=1 << 20)
    shard = store.create_shard(0, MANIFEST)
    written = 0

    def fill() -> None:
        nonlocal written
        for round_ in range(1000):
            batch = [(seq + round_ * 1000, data) for seq, data in big]
            shard.write_batch(batch)
            written += len(batch)

    with pytest.raises(StoreFullError, match="map is at the limit of 1048576 bytes"):
        fill()
    assert shard.stats().sequences == written  # the failed batch left nothing behind
    store.close()
    growing = _store(tmp_path / "g", initial_map_size=1 << 20, max_map_size=64 << 20)
    shard = growing.create_shard(0, MANIFEST)
    for round_ in range(40):
        shard.write_batch([(seq + round_ * 1000, data) for seq, data in big])
    stats = shard.stats()
    assert stats.map_size > 1 << 20
    assert stats.sequences == 40 * 60
    growing.close()


def test_corruption_on_disk_is_data_loss(tmp_path: Path) -> None:
    items = make_records(3)
    store = _store(tmp_path)
    store.create_shard(0, MANIFEST).write_batch(items)
    store.close()
    corrupt_stored(tmp_path, 0, 1, at=100)
    store = _store(tmp_path)
    with pytest.raises(CorruptRecordError, match="seq 1 of shard 0 is corrupted on disk: checksum"):
        store.get(0).get(1)
    assert store.get(0).get(0) == items[0][1]
    store.close()


def test_interrupted_creation_is_cleaned_up(tmp_path: Path) -> None:
    (tmp_path / "shards" / f"{5:010d}.creating").mkdir(parents=True)
    (tmp_path / "shards" / "not-a-shard").mkdir()
    store = _store(tmp_path)
    assert store.shards() == []
    assert not (tmp_path / "shards" / f"{5:010d}.creating").exists()
    store.close()


def test_readers_run_while_writers_write(tmp_path: Path) -> None:
    items = make_records(40)
    store = _store(tmp_path, initial_map_size=1 << 20)
    shard = store.create_shard(0, MANIFEST)
    shard.write_batch(items[:10])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen = [pair for chunk in shard.read_range(0, 1000) for pair in chunk]
                assert [s for s, _ in seen] == list(range(len(seen)))  # a prefix, never a gap
                for seq, data in seen:
                    assert data == items[seq][1]
                    records.decode(data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(10, 40, 5):
        shard.write_batch(items[start : start + 5])
    # grow the map while the readers read
    for round_ in range(1, 30):
        shard.write_batch([(seq + round_ * 1000, data) for seq, data in items])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert shard.stats().map_size > 1 << 20
    store.close()


# --------------------------------------------------------------------------- regressions


def test_overwrite_repairs_a_corrupted_record(tmp_path: Path) -> None:
    items = make_records(3)
    store = _store(tmp_path)
    store.create_shard(0, MANIFEST).write_batch(items)
    store.close()
    corrupt_stored(tmp_path, 0, 1, at=100)
    store = _store(tmp_path)
    shard = store.get(0)
    assert shard.write_batch([items[1]], overwrite=True).written == 1
    assert shard.get(1) == items[1][1]
    stats = shard.stats()
    assert stats.positions == 3 * SEQ_LEN
    assert stats.record_bytes == sum(len(d) for _, d in items)
    store.close()


def test_retries_of_stored_records_are_no_ops_even_after_sealing(tmp_path: Path) -> None:
    items = make_records(4)
    store = _store(tmp_path)
    shard = store.create_shard(0, MANIFEST)
    shard.write_batch(items)
    shard.seal()
    assert shard.write_batch(items[:2]).unchanged == 2
    with pytest.raises(ShardSealedError):
        shard.write_batch(make_records(1, start=9))
    store.close()


def test_one_server_per_data_directory(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(StoreError, match="in use by another logitcache server"):
        _store(tmp_path)
    store.close()
    _store(tmp_path).close()


def test_bad_directories_do_not_stop_the_start(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create_shard(1, MANIFEST).write_batch(make_records(2))
    store.close()
    shards = tmp_path / "shards"
    (shards / "0000000005").mkdir()  # empty: no data.mdb
    (shards / "000000000²").mkdir()  # digits, but not ASCII ones
    (shards / "9999999999").mkdir()  # above 2**32 - 1
    store = _store(tmp_path)
    assert [s.shard_id for s in store.shards()] == [1, 5]  # the empty one is listed, damaged
    assert store.get(1).damage is None
    assert "data.mdb is missing" in (store.get(5).damage or "")
    assert store.get(1).write_batch(make_records(1, start=2)).written == 1  # the healthy shard serves on
    with pytest.raises(ShardExistsError, match=r"shard 5 already exists \(damaged"):
        store.create_shard(5, MANIFEST)
    with pytest.raises(ShardDamagedError, match="shard 5 is damaged"):
        store.create_shard(5, MANIFEST, exist_ok=True)
    store.close()


def test_writes_do_not_stall_behind_readers(tmp_path: Path) -> None:
    """Aborting an LMDB write transaction waits for the other threads inside LMDB: conflicts and
    map growth are settled before the write transaction, so busy readers cannot stall a writer."""
    items = make_records(20)
    store = _store(tmp_path, initial_map_size=1 << 20, max_map_size=1 << 30)
    shard = store.create_shard(0, MANIFEST)
    shard.write_batch(items[:2])
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for _ in shard.read_range(0, 1 << 40, chunk_bytes=1 << 14):
                pass

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        for round_ in range(1, 100):
            shard.write_batch([(seq + round_ * 100, data) for seq, data in items])
            if round_ % 10 == 0:
                with pytest.raises(RecordConflictError):
                    shard.write_batch([(round_ * 100, items[1][1])])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert time.monotonic() - started < 60
    assert shard.stats().map_size > 1 << 20
    store.close()


def test_the_last_seq_is_reserved(tmp_path: Path) -> None:
    store = _store(tmp_path)
    shard = store.create_shard(0, MANIFEST)
    with pytest.raises(InvalidRequestError, match="seq: expected 0 <= seq <= 2\\*\\*64 - 2"):
        shard.write_batch([(2**64 - 1, make_records(1)[0][1])])
    assert shard.write_batch([(2**64 - 2, make_records(1)[0][1])]).written == 1
    assert [seq for chunk in shard.read_range(0, 2**64 - 1) for seq, _ in chunk] == [2**64 - 2]
    store.close()


def test_seq_runs_are_the_same_in_any_chunking(tmp_path: Path) -> None:
    store = Store(tmp_path)
    shard = store.create_shard(0, MANIFEST)
    data = make_records(1)[0][1]
    shard.write_batch([(seq, data) for seq in (0, 1, 2, 5, 6, 9, 10, 11, 20, 30, 31)])
    expected = [(0, 3), (5, 7), (9, 12), (20, 21), (30, 32)]
    for chunk in (1, 2, 3, 100):
        chunks = list(shard.seq_runs(chunk))
        assert [run for c in chunks for run in c] == expected
        assert all(1 <= len(c) <= chunk for c in chunks)
    assert missing_seqs(itertools.chain.from_iterable(shard.seq_runs(2)), None, 2) == (21, [(3, 5), (7, 9)])
    store.close()


def test_concurrent_creations_of_one_shard_make_it_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    made: list[object] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(store.create_shard(5, MANIFEST, exist_ok=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(made) == 8
    assert all(shard is made[0] for shard in made)
    assert [s.shard_id for s in store.shards()] == [5]
    store.close()
