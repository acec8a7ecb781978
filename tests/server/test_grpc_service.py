"""The gRPC service end to end: a real server on port 0, a real client, a real LMDB in a temp dir."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from logitcache import wire
from logitcache.client import (
    AlreadyExistsError,
    CacheClient,
    CacheError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.proto.v1 import cache_pb2_grpc as pb_grpc
from tests.server.helpers import (
    MANIFEST,
    SEQ_LEN,
    TOPK_MANIFEST,
    corrupt_stored,
    make_records,
    running_server,
    self_signed_cert,
)


def test_round_trip_across_shards(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        data = {shard: make_records(25, seed=shard) for shard in (0, 1, 7)}
        for shard, items in data.items():
            client.create_shard(shard, MANIFEST)
            summary = client.write(shard, items, batch_records=6)
            assert (summary.batches, summary.written, summary.positions) == (5, 25, 25 * SEQ_LEN)
        for shard, items in data.items():
            order = [24, 0, 13, 13, 5]
            assert list(client.read(shard, seqs=order)) == [items[i] for i in order]
            assert list(client.read(shard, ranges=[(20, 100), (0, 3)])) == items[20:] + items[:3]
        shards = client.list_shards()
        assert [s.shard for s in shards] == [0, 1, 7]
        info = client.get_shard(7)
        assert (info.sequences, info.positions, info.first_seq, info.last_seq) == (25, 25 * SEQ_LEN, 0, 24)
        assert info.manifest == MANIFEST
        assert info.record_bytes == sum(len(d) for _, d in data[7])
        stats = client.stats()
        assert stats.records_written == 75
        assert stats.positions_read > 0


def test_reads_come_in_messages_of_about_the_asked_size(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, client):
        client.create_shard(0, MANIFEST)
        items = make_records(40)
        client.write(0, items)
        target = len(items[0][1]) * 4
        request = pb.ReadRequest(shard=0, ranges=[pb.SeqRange(start=0, end=40)], max_message_bytes=target)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            responses = list(pb_grpc.LogitCacheStub(channel).Read(request))
        assert 10 <= len(responses) <= 14
        for this, following in itertools.pairwise(responses):
            size = sum(len(r.data) for r in this.records)  # up to the target, full: the next would not fit
            assert size <= target < size + len(following.records[0].data)
        assert [r.seq for response in responses for r in response.records] == list(range(40))


def test_windows_are_valid_records(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        for shard, manifest, topk in ((0, MANIFEST, False), (1, TOPK_MANIFEST, True)):
            client.create_shard(shard, manifest)
            items = make_records(3, topk=topk)
            client.write(shard, items)
            for seq, data in client.read(shard, seqs=[2, 0], window=(8, 24)):
                window = records.decode(data)
                full = records.decode(items[seq][1])
                assert window.header.num_positions == 16
                assert (window.input_ids == full.input_ids[8:24]).all()
                lo, hi = full.offsets[8], full.offsets[24]
                assert (window.token_ids == full.token_ids[lo:hi]).all()
        with pytest.raises(InvalidArgumentError, match="window: expected 0 <= start < end <= T = 32"):
            list(client.read(0, seqs=[0], window=(8, 40)))
        with pytest.raises(InvalidArgumentError, match="window"):
            list(client.read(0, seqs=[0], window=(8, 8)))


def test_retries_are_no_ops_conflicts_and_overwrite(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        items = make_records(5)
        client.write(0, items)
        again = client.write(0, items)
        assert (again.written, again.unchanged) == (0, 5)
        other = make_records(1, seed=9, start=3)
        with pytest.raises(AlreadyExistsError, match="seq 3 of shard 0 is stored with different bytes"):
            client.write(0, other)
        assert list(client.read(0, seqs=[3])) == [items[3]]
        assert client.write(0, other, overwrite=True).written == 1
        assert list(client.read(0, seqs=[3])) == other


def test_a_bad_batch_is_rejected_whole_and_earlier_batches_stay(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        items = make_records(9)
        bad = bytearray(items[7][1])
        bad[60] ^= 0x10
        batches = [items[0:3], items[3:6], [items[6], (7, bytes(bad)), items[8]]]
        acks: list[int] = []

        def stream() -> None:
            acks.extend(ack.batch_id for ack in client.write_batches(0, batches))

        with pytest.raises(InvalidArgumentError, match="record for seq 7 is malformed: checksum"):
            stream()
        assert acks == [0, 1]
        assert [seq for seq, _ in client.read(0, ranges=[(0, 100)])] == list(range(6))


def test_every_error_code(tmp_path: Path) -> None:
    with running_server(tmp_path, max_message_bytes=1 << 20) as (server, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(2))
        # NOT_FOUND
        with pytest.raises(NotFoundError, match="shard 5 does not exist"):
            client.get_shard(5)
        with pytest.raises(NotFoundError, match="seq 9 is not in shard 0"):
            list(client.read(0, seqs=[1, 9]))
        with pytest.raises(NotFoundError):
            client.write(5, make_records(1))
        # ALREADY_EXISTS
        with pytest.raises(AlreadyExistsError, match="shard 0 already exists"):
            client.create_shard(0, MANIFEST)
        assert client.create_shard(0, MANIFEST, exist_ok=True).sequences == 2
        # FAILED_PRECONDITION: manifest mismatch, different manifest on exist_ok, sealed
        with pytest.raises(FailedPreconditionError, match="method: the shard's manifest says 'sampled'"):
            client.write(0, make_records(1, topk=True, start=5))
        with pytest.raises(FailedPreconditionError, match="different manifest"):
            client.create_shard(0, TOPK_MANIFEST, exist_ok=True)
        client.create_shard(1, MANIFEST)
        client.seal_shard(1)
        with pytest.raises(FailedPreconditionError, match="shard 1 is sealed"):
            client.write(1, make_records(1))
        assert client.get_shard(1).sealed
        # INVALID_ARGUMENT: malformed record, bad manifest, bad request
        with pytest.raises(InvalidArgumentError, match="magic"):
            client.write(0, [(10, b"LGCX" + make_records(1)[0][1][4:])])
        with pytest.raises(InvalidArgumentError, match="vocab_size: expected 2 <= V"):
            client.create_shard(2, _raw_manifest(vocab=1))
        with pytest.raises(InvalidArgumentError, match="either seqs or ranges"):
            list(client.read(0, seqs=[0], ranges=[(0, 1)]))
        with pytest.raises(InvalidArgumentError, match="range: expected start <= end"):
            list(client.read(0, ranges=[(5, 1)]))
        with pytest.raises(InvalidArgumentError, match="appears twice"):
            client.write(0, make_records(1) * 2)
        # RESOURCE_EXHAUSTED: a message over the server's limit
        big = b"\0" * (2 << 20)
        with pytest.raises(ResourceExhaustedError):
            client.write(0, [(11, big)])
        # nothing above changed what is stored
        assert client.get_shard(0).sequences == 2
        stats = client.stats()
        for code in ("NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "INVALID_ARGUMENT"):
            assert stats.errors_by_code[code] >= 1
        assert server.port > 0


def _raw_manifest(vocab: int) -> ShardManifest:
    """A manifest object that skips validation, to send invalid fields over the wire."""
    manifest = object.__new__(ShardManifest)
    for field, value in dict(
        vocab_size=vocab, method="sampled", rounds=5, temperature=1.0, k=0, top_p=None, seq_len=0, teacher="",
        tokenizer_fingerprint="",
    ).items():  # fmt: skip
        object.__setattr__(manifest, field, value)
    return manifest


def test_data_loss_on_a_corrupted_record(tmp_path: Path) -> None:
    items = make_records(3)
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        client.write(0, items)
    corrupt_stored(tmp_path, 0, 1, at=200)
    with running_server(tmp_path) as (_, client):
        with pytest.raises(DataLossError, match="seq 1 of shard 0 is corrupted on disk"):
            list(client.read(0, ranges=[(0, 3)]))
        assert list(client.read(0, seqs=[2])) == [items[2]]  # the server keeps serving
        assert client.stats().errors_by_code["DATA_LOSS"] == 1


def test_auth_guards_mutating_calls(tmp_path: Path) -> None:
    with running_server(tmp_path, auth_token="s3cret") as (server, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(2))
        anonymous = CacheClient(f"127.0.0.1:{server.port}")
        wrong = CacheClient(f"127.0.0.1:{server.port}", auth_token="guess")
        try:
            for who in (anonymous, wrong):
                with pytest.raises(UnauthenticatedError, match="Bearer"):
                    who.create_shard(1, MANIFEST)
                with pytest.raises(UnauthenticatedError):
                    who.write(0, make_records(1, start=5))
                with pytest.raises(UnauthenticatedError):
                    who.seal_shard(0)
            # reads need no token
            assert len(list(anonymous.read(0, ranges=[(0, 10)]))) == 2
            assert anonymous.get_shard(0).sequences == 2
        finally:
            anonymous.close()
            wrong.close()
        assert client.get_shard(0).sequences == 2
        assert not client.get_shard(0).sealed


def test_health_and_reflection(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, _), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "logitcache.v1.LogitCache"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"logitcache.v1.LogitCache", "grpc.health.v1.Health"} <= names


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, client):
        for shard in range(4):
            client.create_shard(shard, MANIFEST)
        items = make_records(40)
        errors: list[BaseException] = []
        done = threading.Event()

        def writer(shard: int) -> None:
            try:
                with CacheClient(f"127.0.0.1:{server.port}") as own:
                    for start in range(0, 40, 4):
                        own.write(shard, items[start : start + 4])
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                with CacheClient(f"127.0.0.1:{server.port}") as own:
                    while not done.is_set():
                        for shard in range(4):
                            got = list(own.read(shard, ranges=[(0, 1000)]))
                            assert [s for s, _ in got] == list(range(len(got)))  # a prefix, never torn
                            assert all(data == items[seq][1] for seq, data in got)
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=reader) for _ in range(3)]
        writers = [threading.Thread(target=writer, args=(shard,)) for shard in range(4)]
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert not errors, errors
        assert [client.get_shard(s).sequences for s in range(4)] == [40] * 4


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, "DNS:localhost,IP:127.0.0.1")
    with running_server(tmp_path / "data", tls_cert=cert, tls_key=key) as (server, _):
        with CacheClient(f"localhost:{server.port}", tls_root_cert=cert) as secure:
            secure.create_shard(0, MANIFEST)
            assert secure.write(0, make_records(2)).written == 2
        with CacheClient(f"localhost:{server.port}", timeout=3) as plain, pytest.raises(Exception, match="UNAVAILABLE"):
            plain.list_shards()


# --------------------------------------------------------------------------- regressions


def _long_records(lengths: list[int]) -> list[tuple[int, bytes]]:
    import torch

    from logitcache.targets.sampling import sample_random
    from logitcache.targets.synthetic import lm_like_logits

    gen = torch.Generator().manual_seed(0)
    out = []
    for seq, length in enumerate(lengths):
        targets = sample_random(lm_like_logits(length, 3000, generator=gen), 20, generator=gen)
        out.append((seq, records.encode(torch.randint(0, 3000, (length,), generator=gen), targets)))
    return out


def test_read_messages_stay_under_the_size_limit(tmp_path: Path) -> None:
    any_length = ShardManifest(vocab_size=3000, method="sampled", rounds=20)
    items = _long_records([21000, 30000, 800, 60000])  # about 450 KB, 640 KB, 17 KB and 1.3 MB
    assert len(items[3][1]) > 1 << 20
    with running_server(tmp_path, max_message_bytes=4 << 20) as (_, client):
        client.create_shard(0, any_length)
        for item in items:
            client.write(0, [item])
    with running_server(tmp_path, max_message_bytes=1 << 20) as (_, client):
        assert list(client.read(0, seqs=[0, 1, 2])) == items[:3]
        assert list(client.read(0, ranges=[(0, 3)])) == items[:3]
        too_big = r"seq 3 is 1.2 MiB, more than one message may carry \(--max-message-bytes 1.0 MiB\): read it by"
        with pytest.raises(ResourceExhaustedError, match=too_big) as refused:
            list(client.read(0, seqs=[3]))
        assert refused.value.retry_after is None  # permanent for this request: no pushback
        assert next(iter(client.read(0, seqs=[3], window=(0, 100))))[0] == 3  # a window of it fits


def test_empty_requests_are_refused(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client):
        client.create_shard(0, MANIFEST)
        with pytest.raises(InvalidArgumentError, match="expected at least one record"):
            list(client.write_batches(0, [[]]))
        with pytest.raises(InvalidArgumentError, match="expected seqs or ranges, got neither"):
            list(client.read(0))
        with grpc.insecure_channel(client.address) as channel, pytest.raises(grpc.RpcError, match="at most 65536 seqs"):
            list(pb_grpc.LogitCacheStub(channel).Read(pb.ReadRequest(shard=0, seqs=[0] * 70000)))  # the client splits
        with pytest.raises(InvalidArgumentError, match="request"):
            client.get_shard(-1)


def test_a_client_leaving_mid_stream_is_not_an_internal_error(tmp_path: Path) -> None:
    import queue

    with running_server(tmp_path) as (server, client):
        client.create_shard(0, MANIFEST)
        pending: queue.Queue[pb.WriteRequest | None] = queue.Queue()

        def requests() -> Iterator[pb.WriteRequest]:
            while (item := pending.get()) is not None:
                yield item

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = pb_grpc.LogitCacheStub(channel).Write(requests())
            pending.put(pb.WriteRequest(shard=0, records=[pb.Record(seq=s, data=d) for s, d in make_records(2)]))
            assert next(call).written == 2
            call.cancel()
            pending.put(None)
        deadline = time.monotonic() + 10
        while "CANCELLED" not in server.stats.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "INTERNAL" not in server.stats.errors
        assert client.get_shard(0).sequences == 2


def test_an_empty_auth_token_is_refused(tmp_path: Path) -> None:
    from pydantic import SecretStr, ValidationError

    from logitcache.server.settings import ServerSettings

    with pytest.raises(ValidationError, match="non-empty token"):
        ServerSettings(data_dir=tmp_path, auth_token=SecretStr("  "))


def test_codes_mean_one_thing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server(tmp_path) as (server, client):
        client.create_shard(0, MANIFEST)
        client.write(0, make_records(2))
        with grpc.insecure_channel(client.address) as channel:
            raw = channel.unary_unary(f"/{pb.DESCRIPTOR.services_by_name['LogitCache'].full_name}/GetShard")
            with pytest.raises(grpc.RpcError) as unparseable:
                raw(b"\xff\xff\xff", timeout=10)
            assert unparseable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "cannot parse a logitcache.v1.GetShardRequest" in (unparseable.value.details() or "")
            write = channel.stream_stream(f"/{pb.DESCRIPTOR.services_by_name['LogitCache'].full_name}/Write")
            with pytest.raises(grpc.RpcError) as in_a_stream:
                list(write(iter([b"\x0a\xff"]), timeout=10))
            assert in_a_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a bug deep inside (here a ValueError injected into the record codec the Read path uses) is INTERNAL,
        # logged with its traceback, never a permanent INVALID_ARGUMENT blamed on the request
        from logitcache.core import records as codec

        def broken(data: bytes) -> int:
            raise ValueError("a bug in the codec")

        monkeypatch.setattr(codec, "peek_positions", broken)
        with caplog.at_level("ERROR", logger="logitcache.server.grpc_service"), pytest.raises(CacheError) as bug:
            list(client.read(0, seqs=[0]))
        assert bug.value.code == grpc.StatusCode.INTERNAL
        assert "internal error: ValueError: a bug in the codec" in bug.value.details
        assert any(r.exc_info for r in caplog.records)  # the traceback is in the log
        monkeypatch.undo()
        assert [seq for seq, _ in client.read(0, seqs=[0, 1])] == [0, 1]  # and the server serves on
        assert server.stats.errors["INTERNAL"] == 1


def test_a_stream_across_shards_acks_what_came_before_a_failure(tmp_path: Path) -> None:
    """Batch 0 (shard 0) commits and is acknowledged; batch 1 (shard 1, sealed) fails: the stream
    ends with batch 1's error, whatever order the shards' commits ran in (batch 2, on a third
    shard, is never acknowledged; it may have committed already, as any unacknowledged batch may)."""
    with running_server(tmp_path) as (_, client):
        for shard in (0, 1, 2):
            client.create_shard(shard, MANIFEST)
        client.seal_shard(1)
        items = make_records(3)
        requests = [
            pb.WriteRequest(shard=shard, batch_id=i, records=[pb.Record(seq=seq, data=data)])
            for i, (shard, (seq, data)) in enumerate(zip((0, 1, 2), items, strict=True))
        ]
        with grpc.insecure_channel(client.address) as channel:
            call = pb_grpc.LogitCacheStub(channel).Write(iter(requests), timeout=30)
            assert next(call).batch_id == 0
            with pytest.raises(grpc.RpcError) as failed:
                next(call)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "shard 1 is sealed" in (failed.value.details() or "")
        assert list(client.read(0, seqs=[0])) == [items[0]]
        assert client.get_shard(1).sequences == 0


def test_a_manifest_with_fields_this_server_does_not_know_is_refused(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, client), grpc.insecure_channel(client.address) as channel:
        manifest = wire.manifest_to_proto(MANIFEST).SerializeToString() + b"\xa8\x06\x02"  # field 101 = 2
        request = pb.CreateShardRequest(shard=3).SerializeToString() + b"\x12" + bytes([len(manifest)]) + manifest
        create = channel.unary_unary(f"/{pb.DESCRIPTOR.services_by_name['LogitCache'].full_name}/CreateShard")
        with pytest.raises(grpc.RpcError) as refused:
            create(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown field(s) [101]" in (refused.value.details() or "")
        assert client.list_shards() == []
