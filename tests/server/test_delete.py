"""Deleting a shard: through gRPC (``DeleteShard``) and the store, sealed ones only with force."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitcache.client import CacheClient, FailedPreconditionError, NotFoundError, UnauthenticatedError
from logitcache.server import layout
from logitcache.server.errors import ShardNotFoundError
from logitcache.server.store import Store
from tests.server.helpers import MANIFEST, TOPK_MANIFEST, make_records, running_server


def test_delete_removes_the_shard_and_its_files_and_the_id_can_be_used_again(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.create_shard(1, MANIFEST)
        client.write(0, make_records(3))
        client.write(1, make_records(2))
        info = client.delete_shard(0)
        assert (info.shard, info.sequences, info.sealed) == (0, 3, False)
        assert not layout.shard_dir(tmp_path, 0).exists()
        assert list((tmp_path / "shards").iterdir()) == [layout.shard_dir(tmp_path, 1)]
        assert [s.shard for s in client.list_shards()] == [1]
        with pytest.raises(NotFoundError, match="shard 0 does not exist"):
            client.get_shard(0)
        with pytest.raises(NotFoundError, match="shard 0 does not exist"):
            client.delete_shard(0)
        client.create_shard(0, TOPK_MANIFEST)  # the same id, another manifest
        client.write(0, make_records(1, topk=True))
        assert client.get_shard(0).manifest == TOPK_MANIFEST
    with running_server(tmp_path) as (_, client):  # a restart brings nothing back
        assert [(s.shard, s.sequences) for s in client.list_shards()] == [(0, 1), (1, 2)]


def test_a_sealed_shard_is_deleted_only_with_force(tmp_path: Path) -> None:
    items = make_records(2)
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.write(0, items)
        client.seal_shard(0)
        with pytest.raises(FailedPreconditionError, match=r"shard 0 is sealed: .* needs force"):
            client.delete_shard(0)
        assert list(client.read(0, ranges=[(0, 10)])) == items  # nothing changed
        assert client.delete_shard(0, force=True).sealed
        assert client.list_shards() == []


def test_delete_needs_the_token(tmp_path: Path) -> None:
    with running_server(tmp_path, auth_token="s3cret") as (server, client):
        client.create_shard(0, MANIFEST)

        with CacheClient(server.address) as anonymous, pytest.raises(UnauthenticatedError):
            anonymous.delete_shard(0, force=True)
        assert client.get_shard(0).shard == 0
        client.delete_shard(0)


def test_calls_on_a_deleted_shard_are_not_found_and_a_damaged_shard_can_be_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        shard = store.create_shard(0, MANIFEST)
        shard.write_batch(make_records(2))
        store.delete_shard(0)
        for call in (lambda: shard.get(0), lambda: shard.write_batch(make_records(1, start=5)), shard.seal):
            with pytest.raises(ShardNotFoundError, match="shard 0 was deleted"):
                call()
        store.create_shard(1, MANIFEST)
    finally:
        store.close()
    (layout.shard_dir(tmp_path, 1) / "data.mdb").write_bytes(b"not an LMDB file")
    store = Store(tmp_path)
    try:
        assert store.get(1).damage is not None
        assert store.delete_shard(1).damage is not None
        assert store.shards() == []
    finally:
        store.close()


def test_a_start_clears_what_an_interrupted_deletion_left(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_shard(3, MANIFEST).write_batch(make_records(1))
    store.close()
    path = layout.shard_dir(tmp_path, 3)
    leftover = path.with_name(path.name + layout.DELETING_SUFFIX)
    path.rename(leftover)  # where a crash between the rename and the removal leaves it
    store = Store(tmp_path)
    try:
        assert store.shards() == []
        assert not leftover.exists()
    finally:
        store.close()


def test_what_an_earlier_deletion_left_does_not_stop_the_next(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        store.create_shard(3, MANIFEST).write_batch(make_records(1))
        path = layout.shard_dir(tmp_path, 3)
        leftover = path.with_name(path.name + layout.DELETING_SUFFIX)
        leftover.mkdir()
        (leftover / "data.mdb").write_bytes(b"half removed")
        assert store.delete_shard(3).sequences == 1
        assert list((tmp_path / "shards").iterdir()) == []
        assert store.infos() == []
    finally:
        store.close()
