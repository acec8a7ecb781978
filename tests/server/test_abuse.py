"""Abuse against one real server process: every attack gets its documented error, nothing stored
changes, and the server keeps serving."""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest
import torch
import xxhash

from logitcache.client import (
    CacheError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc
from logitcache.targets.sampling import sample_random
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess
from tests.server.helpers import MANIFEST, SEQ_LEN, VOCAB, make_records

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("abuse"), "--auth-token", TOKEN, "--max-message-bytes", str(1 << 20), "--workers", "4"
    )
    with proc.client(TOKEN) as client:
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(4))
    yield proc
    proc.stop()


def _unchanged(server: ServerProcess) -> None:
    """Shard 0 still holds exactly seqs 0..3, unsealed, and the server answers health checks."""
    with server.client() as client:
        info = client.get_shard(0)
        assert (info.sequences, info.sealed) == (4, False)
        assert client.list_seqs(0).tolist() == [0, 1, 2, 3]
        assert 9 not in [s.shard for s in client.list_shards()]  # the one the unauthenticated calls tried
    assert httpx.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}


def _resealed(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one header field changed and the checksum recomputed (so only the field is wrong)."""
    raw = bytearray(data)
    struct.pack_into(fmt, raw, offset, value)
    h = xxhash.xxh3_64()
    h.update(bytes(raw[:48]))
    h.update(bytes(raw[56:]))
    struct.pack_into("<Q", raw, 48, h.intdigest())
    return bytes(raw)


def test_oversize_messages_are_resource_exhausted(server: ServerProcess) -> None:
    with server.client(TOKEN) as client, pytest.raises(ResourceExhaustedError):
        client.write(0, [(10, b"\0" * (2 << 20))])
    _unchanged(server)


def test_random_and_truncated_bytes_as_records_are_invalid(server: ServerProcess) -> None:
    rnd = random.Random(0)
    good = make_records(1, start=10)[0][1]
    blobs = [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 300))) for _ in range(20)]
    blobs += [good[:cut] for cut in (0, 10, 55, 56, 57, len(good) - 1)]
    with server.client(TOKEN) as client:
        for blob in blobs:
            with pytest.raises(InvalidArgumentError):
                client.write(0, [(10, blob)])
    _unchanged(server)


def test_huge_declared_lengths_are_refused_without_allocating(server: ServerProcess) -> None:
    good = make_records(1, start=10)[0][1]
    with server.client(TOKEN) as client:
        for offset, fmt, value in ((16, "<I", (1 << 24) - 1), (20, "<I", (1 << 32) - 1), (40, "<I", (1 << 32) - 1)):
            with pytest.raises((InvalidArgumentError, FailedPreconditionError)):
                client.write(0, [(10, _resealed(good, offset, fmt, value))])
    _unchanged(server)


def test_ids_beyond_the_vocabulary_are_refused(server: ServerProcess) -> None:
    bigger = ShardManifest(vocab_size=VOCAB * 4, method="sampled", rounds=20)
    with server.client(TOKEN) as client:
        client.create_shard(7, bigger)
        gen = torch.Generator().manual_seed(0)
        wide = records.encode(
            torch.randint(VOCAB, VOCAB * 4, (SEQ_LEN,), generator=gen),
            sample_random(lm_like_logits(SEQ_LEN, VOCAB * 4, generator=gen), 20, generator=gen),
        )
        with pytest.raises(FailedPreconditionError, match="vocab_size"):
            client.write(0, [(10, wide)])  # ids up to 4 V: valid for its own V, beyond the shard's
        with pytest.raises(InvalidArgumentError):
            client.write(0, [(10, _resealed(make_records(1)[0][1], 8, "<I", 3))])  # ids beyond the record's own V
        client.seal_shard(7)
    with server.client() as client:
        assert client.get_shard(7).sequences == 0


def test_a_flood_of_tiny_messages_leaves_the_server_healthy(server: ServerProcess) -> None:
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        with server.client() as client:
            for _ in range(200):
                try:
                    client.get_shard(0)
                    key = "OK"
                except CacheError as exc:
                    key = exc.code.name
                with lock:
                    outcomes[key] = outcomes.get(key, 0) + 1

    def tiny_writes() -> None:  # thousands of one-record batches in one stream, each refused
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.LogitCacheStub(channel)
            requests = (
                pb.WriteRequest(shard=0, batch_id=i, records=[pb.Record(seq=100 + i, data=b"x")]) for i in range(3000)
            )
            with pytest.raises(grpc.RpcError):
                list(stub.Write(requests, metadata=(("authorization", f"Bearer {TOKEN}"),)))

    threads = [threading.Thread(target=flood) for _ in range(16)] + [threading.Thread(target=tiny_writes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outcomes.get("OK", 0) > 0
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}  # over 4 × workers calls at once: refused, not queued
    _unchanged(server)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/shards/..%2F..%2Fetc%2Fpasswd",
        "/v1/shards/%2e%2e",
        "/v1/shards/-1",
        "/v1/shards/4294967296",
        "/v1/shards/0000000000%2F..%2F..",
        "/v1/shards/1e3/sequences",
        "/v1/shards/0/sequences/18446744073709551616",
    ],
)
def test_shard_names_with_path_tricks_are_404_or_422(server: ServerProcess, path: str) -> None:
    response = httpx.get(f"{server.url}{path}", timeout=10)
    assert response.status_code in (404, 422), response.text
    _unchanged(server)


def test_every_mutating_call_needs_the_token(server: ServerProcess) -> None:
    for token in (None, "wrong", TOKEN.upper(), TOKEN[:-1]):
        with server.client(token) as client:
            with pytest.raises(UnauthenticatedError):
                client.create_shard(9, MANIFEST)
            with pytest.raises(UnauthenticatedError):
                client.seal_shard(0)
            with pytest.raises(UnauthenticatedError):
                client.write(0, make_records(1, start=20))
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        response = httpx.post(f"{server.url}/v1/shards/0/seal", json={}, headers=headers, timeout=10)
        assert response.status_code == 401, response.text
    _unchanged(server)


def test_reads_stay_open_without_the_token(server: ServerProcess) -> None:
    with server.client() as client:
        assert [seq for seq, _ in client.read(0, seqs=[3, 0])] == [3, 0]
    _unchanged(server)
