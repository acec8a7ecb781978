"""CacheClient over several servers: shard routing, listing seqs, reads that survive a restart."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.client import CacheClient, NotFoundError, UnavailableError
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDLoader
from logitcache.writer import CacheWriter
from tests.server.helpers import MANIFEST, SEQ_LEN, VOCAB, make_records, running_server


def test_list_seqs_gives_runs_of_stored_seqs(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        assert client.seq_runs(0) == []
        assert client.list_seqs(0).tolist() == []
        items = [item for item in make_records(12, seed=1) if item[0] not in (3, 4, 9)]
        client.write(0, [*items, *make_records(1, seed=2, start=2**64 - 2)])
        assert client.seq_runs(0) == [(0, 3), (5, 9), (10, 12), (2**64 - 2, 2**64 - 1)]
        assert client.list_seqs(0).tolist() == [0, 1, 2, 5, 6, 7, 8, 10, 11, 2**64 - 2]
        with pytest.raises(NotFoundError, match="shard 7"):
            client.list_seqs(7)


def test_two_servers_each_serve_their_own_shards(tmp_path: Path) -> None:
    with running_server(tmp_path / "a") as (a, _), running_server(tmp_path / "b") as (b, _):
        addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        with CacheClient(addresses, timeout=30) as client:
            for shard in (0, 1, 2, 3):  # placed on addresses[shard % 2]
                client.create_shard(shard, MANIFEST)
                client.write(shard, make_records(5, seed=shard, start=10 * shard))
                client.seal_shard(shard)
            assert [s.shard_id for s in a.store.shards()] == [0, 2]
            assert [s.shard_id for s in b.store.shards()] == [1, 3]
            assert client.locate(3) == addresses[1]
            assert [info.shard for info in client.list_shards()] == [0, 1, 2, 3]
            assert [seq for seq, _ in client.read(3, seqs=[31, 30])] == [31, 30]
            assert client.get_shard(1).sequences == 5

            with pytest.raises(NotFoundError, match="shard 9 is on none of the servers"):
                client.get_shard(9)

            loader = SparseKDLoader(client, [0, 1, 2, 3], batch_size=3, seed=0)
            seen = sorted((int(s), int(q)) for batch in loader for s, q in zip(batch.shards, batch.seqs, strict=True))
            assert seen == [(shard, 10 * shard + i) for shard in range(4) for i in range(5)]

            # a shard created behind the client's back is found on the next miss
            with CacheClient(addresses[1]) as other:
                other.create_shard(4, MANIFEST)
            assert client.locate(4) == addresses[1]

            # a cluster writer creates its shard (on addresses[5 % 2]) before its sender routes to it
            with CacheWriter(client, 5, SamplerConfig(rounds=20), seq_len=SEQ_LEN) as writer:
                writer.write([0, 1], torch.zeros(2, SEQ_LEN, dtype=torch.int64), torch.randn(2, SEQ_LEN, VOCAB))
            assert [s.shard_id for s in b.store.shards()] == [1, 3, 4, 5]
            assert client.list_seqs(5).tolist() == [0, 1]
            assert writer.stats().positions_per_s > 0

            # explicit placement
            client.create_shard(6, ShardManifest(vocab_size=100, method="topk", k=3), address=addresses[1])
            assert client.locate(6) == addresses[1]
            with pytest.raises(ValueError, match="address"):
                client.create_shard(8, MANIFEST, address="127.0.0.1:1")


def test_a_server_that_is_down_does_not_stop_routing_to_the_others(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with running_server(tmp_path) as (server, _):
        live = f"127.0.0.1:{server.port}"
        with CacheClient([dead, live], timeout=5, retries=1) as client:
            client.create_shard(1, MANIFEST, address=live)
            assert client.locate(1) == live
            assert client.get_shard(1).sequences == 0
            # shard 2 may be on the server that does not answer: retryable, and not created twice
            with pytest.raises(UnavailableError, match="did not answer"):
                client.get_shard(2)
            with pytest.raises(UnavailableError, match="cannot place shard 2"):
                client.create_shard(2, MANIFEST)


def test_long_and_numpy_seq_lists_are_read_in_server_sized_requests(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(3))
        seqs = np.tile(np.array([2, 0, 1], dtype=np.uint64), 22000)  # 66000 > the server's 65536 per Read
        assert [seq for seq, _ in client.read(0, seqs=seqs)] == seqs.tolist()


def test_a_client_pickles_without_its_channels(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        clone = pickle.loads(pickle.dumps(client))
        assert clone.get_shard(0).shard == 0
        clone.close()


def test_a_read_broken_by_a_server_restart_resumes_without_repeats(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, http=False)  # it picks its port; the restart takes the same one again
    port = server.port
    try:
        with CacheClient(server.address, timeout=10, retries=8) as client:
            client.create_shard(0, MANIFEST)
            client.write(0, make_records(60, seed=3))
            for query in ({"ranges": [(0, 20), (30, 60)]}, {"seqs": list(range(59, -1, -2))}):
                stream = client.read(0, max_message_bytes=1, **query)
                got = [next(stream)[0] for _ in range(5)]
                server.stop()  # SIGKILL in the middle of the stream
                server = ServerProcess(tmp_path, "--grpc", f"127.0.0.1:{port}", http=False)
                got += [seq for seq, _ in stream]
                if "ranges" in query:
                    assert got == [*range(20), *range(30, 60)]
                else:
                    assert got == list(range(59, -1, -2))
    finally:
        server.stop()
