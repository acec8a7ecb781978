"""ExportedShardReader: an epoch over exported shards is the stored targets, split across ranks, resumable."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from logitcache.exports.columns import ExportDataError
from logitcache.exports.files import export_shard
from logitcache.training import LoaderStateError, ShardSetError, SparseKDBatch
from logitcache.training.batch_decode import decode_batch
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records, running_server

pytest.importorskip("datasets", reason="the reader streams with Hugging Face datasets (logitcache[datasets])")

from logitcache.exports.reader import ExportedShardReader

Stored = dict[tuple[int, int], bytes]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Stored]:
    """Shards 0 (30 records, 4 files) and 5 (13 records, 2 files) exported under one folder."""
    root = tmp_path_factory.mktemp("reader")
    stored: Stored = {}
    with running_server(root / "data") as (_, client):
        for shard, items in ((0, make_records(30, seed=1)), (5, make_records(13, seed=2, start=100))):
            client.create_shard(shard, MANIFEST)
            client.write(shard, items)
            client.seal_shard(shard)
            export_shard(client, shard, str(root / "out"), rows_per_file=8)
            stored.update({(shard, seq): data for seq, data in items})
    return root / "out", stored


def keys(batches: list[SparseKDBatch]) -> list[tuple[int, int]]:
    return [(int(s), int(q)) for b in batches for s, q in zip(b.shards, b.seqs, strict=True)]


def test_one_epoch_yields_exactly_the_stored_targets(exported: tuple[Path, Stored]) -> None:
    out, stored = exported
    reader = ExportedShardReader(str(out), batch_size=1, shuffle=False, world_size=1, rank=0)
    assert reader.sequences == len(stored)
    assert sorted(reader.manifests) == [0, 5]
    batches = list(reader)
    assert keys(batches) == sorted(stored)  # every record once, in shard and seq order
    for batch, key in zip(batches, sorted(stored), strict=True):
        tensors, hashes = decode_batch([stored[key]])  # what SparseKDLoader builds from the record
        for name, tensor in tensors.items():
            assert torch.equal(getattr(batch, name), tensor), name
        assert batch.input_hashes == hashes


def test_shuffled_batches_are_padded_like_the_loaders(exported: tuple[Path, Stored]) -> None:
    out, stored = exported
    reader = ExportedShardReader(str(out), batch_size=8, seed=3, world_size=1, rank=0)  # a 1024-row buffer
    batches = list(reader)
    assert sorted(keys(batches)) == sorted(stored)
    assert keys(batches) != sorted(stored)
    assert [b.batch_index for b in batches] == list(range(6))
    assert {b.epoch for b in batches} == {0}
    for batch in batches:
        tensors, _ = decode_batch([stored[k] for k in keys([batch])])
        assert torch.equal(batch.target_ids, tensors["target_ids"])
        assert torch.equal(batch.target_probs, tensors["target_probs"])
    unbuffered = ExportedShardReader(str(out), batch_size=8, shuffle_buffer=0, drop_last=True, world_size=1, rank=0)
    epoch0 = keys(list(unbuffered))
    unbuffered.set_epoch(1)
    epoch1 = keys(list(unbuffered))
    assert len(epoch0) == len(epoch1) == 40
    assert epoch0 != epoch1


@pytest.mark.parametrize("world_size", [2, 3])  # 6 files: whole files per rank (2, 3); every 4th row (4)
def test_ranks_partition_the_epoch_without_overlap(exported: tuple[Path, Stored], world_size: int) -> None:
    out, stored = exported
    options: dict[str, Any] = {"batch_size": 4, "seed": 1, "shuffle_buffer": 0, "world_size": world_size}
    parts = [keys(list(ExportedShardReader(str(out), rank=rank, **options))) for rank in range(world_size)]
    assert sorted(k for part in parts for k in part) == sorted(stored)  # all of it, none twice
    assert all(part for part in parts)


def test_ranks_split_by_row_when_files_do_not_divide(exported: tuple[Path, Stored]) -> None:
    out, stored = exported
    options: dict[str, Any] = {"batch_size": 5, "shuffle_buffer": 0, "world_size": 4}
    parts = [keys(list(ExportedShardReader(str(out), rank=rank, **options))) for rank in range(4)]
    assert sorted(k for part in parts for k in part) == sorted(stored)
    assert sorted(len(part) for part in parts) == [10, 11, 11, 11]


def test_the_rank_comes_from_torchrun_variables(exported: tuple[Path, Stored], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    reader = ExportedShardReader(str(exported[0]), batch_size=4)
    assert (reader.rank, reader.world_size) == (1, 2)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_after_k_batches_yields_exactly_the_rest(exported: tuple[Path, Stored], shuffle: bool) -> None:
    out, _ = exported
    options: dict[str, Any] = {"batch_size": 4, "shuffle": shuffle, "shuffle_buffer": 0, "seed": 7, "rank": 0}
    options["world_size"] = 1
    first = ExportedShardReader(str(out), **options)
    first.set_epoch(2)
    whole = keys(list(first))
    it = iter(first)
    done = [next(it), next(it), next(it)]
    state = first.state_dict()
    second = ExportedShardReader(str(out), **options)
    second.load_state_dict(state)
    rest = list(second)
    assert keys(done) + keys(rest) == whole
    assert next(b.batch_index for b in rest) == 3
    assert {b.epoch for b in rest} == {2}
    assert len(list(second)) == len(whole) // 4 + 1  # the next iteration is a whole epoch again


def test_a_state_saved_after_the_last_batch_resumes_at_the_epochs_end(exported: tuple[Path, Stored]) -> None:
    out, stored = exported
    options: dict[str, Any] = {"batch_size": 8, "shuffle_buffer": 0, "rank": 0, "world_size": 1}
    first = ExportedShardReader(str(out), **options)
    assert len(keys(list(first))) == len(stored)
    state = first.state_dict()
    assert state["batches_done"] == 6
    second = ExportedShardReader(str(out), **options)
    second.load_state_dict(state)
    assert list(second) == []  # the epoch was done
    second.set_epoch(1)
    assert sorted(keys(list(second))) == sorted(stored)


def test_a_state_of_another_reader_is_refused(exported: tuple[Path, Stored]) -> None:
    out, _ = exported
    state = ExportedShardReader(str(out), batch_size=4, world_size=1, rank=0).state_dict()
    with pytest.raises(LoaderStateError, match="batch_size differs"):
        ExportedShardReader(str(out), batch_size=5, world_size=1, rank=0).load_state_dict(state)
    with pytest.raises(LoaderStateError, match="version"):
        ExportedShardReader(str(out), batch_size=4, world_size=1, rank=0).load_state_dict({})


def test_mixed_manifests_are_refused_unless_allowed(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as (_, client):
        for shard, manifest in ((1, MANIFEST), (2, TOPK_MANIFEST)):
            client.create_shard(shard, manifest)
            client.write(shard, make_records(3, seed=shard, topk=manifest is TOPK_MANIFEST))
            client.seal_shard(shard)
            export_shard(client, shard, str(tmp_path / "out"))
        stored = {(s, q): bytes(d) for s in (1, 2) for q, d in client.read_views(s, seqs=[0, 1, 2])}
    with pytest.raises(ShardSetError, match="shards 1 and 2 hold different targets"):
        ExportedShardReader(str(tmp_path / "out"), batch_size=2, world_size=1, rank=0)
    reader = ExportedShardReader(
        str(tmp_path / "out"), batch_size=6, allow_mixed=True, shuffle_buffer=0, world_size=1, rank=0
    )
    (batch,) = list(reader)
    tensors, _ = decode_batch([stored[k] for k in keys([batch])])
    assert torch.equal(batch.target_probs, tensors["target_probs"])


def test_an_edited_row_is_refused_while_reading(exported: tuple[Path, Stored], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(exported[0], out)
    part = out / "shard-0000000005" / "part-00001.parquet"
    table = pq.read_table(part)
    swapped = pa.array(table.column("checksum").to_pylist()[::-1], pa.uint64())  # rows with each other's checksums
    edited = table.set_column(table.schema.get_field_index("checksum"), "checksum", swapped)
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(ExportDataError, match="the file was changed or damaged"):
        list(ExportedShardReader(str(out), batch_size=4, shuffle=False, world_size=1, rank=0))


def test_bad_arguments(exported: tuple[Path, Stored], tmp_path: Path) -> None:
    out = str(exported[0])
    with pytest.raises(ValueError, match="batch_size"):
        ExportedShardReader(out, batch_size=0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        ExportedShardReader(out, batch_size=1, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="no complete shard export"):
        ExportedShardReader(str(tmp_path), batch_size=1)
    with pytest.raises(ShardSetError, match="exported twice"):
        ExportedShardReader([out, out], batch_size=1)


def test_it_streams_an_export_from_s3(tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket, options = s3_bucket
    items = make_records(12, seed=6)
    with running_server(tmp_path / "data") as (_, client):
        client.create_shard(2, MANIFEST)
        client.write(2, items)
        client.seal_shard(2)
        export_shard(client, 2, f"{bucket}/kd", rows_per_file=5, storage_options=options)
    reader = ExportedShardReader(
        f"{bucket}/kd", batch_size=4, shuffle_buffer=0, storage_options=options, world_size=1, rank=0
    )
    batches = list(reader)
    assert sorted(keys(batches)) == [(2, seq) for seq, _ in items]
    stored = dict(items)
    for batch in batches:
        tensors, _ = decode_batch([stored[seq] for _, seq in keys([batch])])
        assert torch.equal(batch.target_probs, tensors["target_probs"])
