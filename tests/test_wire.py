"""The hand-encoded ReadResponse against protobuf's own serialization, and the dataclass conversions."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache import wire
from logitcache.core.manifest import ShardInfo
from logitcache.core.results import BatchAck, StatsSnapshot
from logitcache.proto.v1 import cache_pb2 as pb
from tests.server.helpers import MANIFEST

records = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=300) | st.sampled_from([b"", b"x" * 20000])),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_read_response_bytes_are_what_protobuf_serializes(items: list[tuple[int, bytes]]) -> None:
    reference = pb.ReadResponse(records=[pb.Record(seq=seq, data=data) for seq, data in items]).SerializeToString()
    encoded = wire.read_response_bytes(items)
    assert encoded == reference
    assert [(r.seq, r.data) for r in pb.ReadResponse.FromString(encoded).records] == items
    assert [(seq, bytes(data)) for seq, data in wire.read_response_records(encoded)] == items


unknown_fields = st.lists(
    st.sampled_from([b"\x18\x96\x01", b"\x22\x03abc", b"\x29" + bytes(8), b"\x35" + bytes(4)]), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(records, unknown_fields, st.booleans())
def test_read_response_records_parse_as_protobuf_does(
    items: list[tuple[int, bytes]], unknown: list[bytes], data_first: bool
) -> None:
    """Fields in either order, unknown fields in records and around them (a newer server's), and
    repeated scalars (the last wins) parse as ``ReadResponse.FromString`` parses them."""
    parts = []
    for seq, data in items:
        seq_field = pb.Record(seq=seq).SerializeToString()
        data_field = pb.Record(data=data).SerializeToString()
        body = b"".join(unknown) + (data_field + seq_field if data_first else seq_field + data_field)
        parts.append(b"".join(unknown) + b"\x0a")  # ReadResponse.records
        parts.append(wire._varint(len(body)) + body)
    message = b"".join(parts)
    reference = [(r.seq, r.data) for r in pb.ReadResponse.FromString(message).records]
    parsed = wire.read_response_records(message)
    assert [(seq, bytes(data)) for seq, data in parsed] == reference == items
    assert all(data.readonly for _, data in parsed)


@pytest.mark.parametrize(
    "message", [b"\x0a", b"\x0a\x05\x08\x01", b"\x0a\x03\x12\x05ab", b"\x0a\x02\x08\xff", b"\x0b", b"\xff" * 11]
)
def test_read_response_records_refuse_what_protobuf_refuses(message: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.ReadResponse.FromString(message)
    with pytest.raises(ValueError, match="ReadResponse"):
        wire.read_response_records(message)


def test_shard_info_round_trips_with_damage_and_without_a_manifest() -> None:
    info = ShardInfo(0, MANIFEST, False, 3, 96, 2000, 8192, 0, 2, 1 << 20)
    assert wire.shard_info_from_proto(wire.shard_info_to_proto(info)) == info
    damaged = ShardInfo(4, None, False, 0, 0, 0, 0, None, None, 0, damage="meta page 0: bad", damaged_records=2)
    message = wire.shard_info_to_proto(damaged)
    assert not message.HasField("manifest")
    assert wire.shard_info_from_proto(message) == damaged


def test_acks_and_stats_convert_to_the_projects_types() -> None:
    ack = wire.batch_ack_from_proto(pb.WriteAck(batch_id=3, shard=2, written=4, unchanged=1, positions=160))
    assert ack == BatchAck(batch_id=3, shard=2, written=4, unchanged=1, positions=160)
    message = pb.StatsResponse(
        records_written=1, positions_written=2, bytes_written=3, records_read=4, positions_read=5, bytes_read=6,
        shards=7, uptime_seconds=8.5, errors_by_code={"NOT_FOUND": 9},
    )  # fmt: skip
    stats = wire.stats_from_proto(message)
    assert stats == StatsSnapshot(1, 2, 3, 4, 5, 6, 7, 8.5, {"NOT_FOUND": 9})
    assert type(stats.errors_by_code) is dict
