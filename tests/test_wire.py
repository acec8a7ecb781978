"""The hand-encoded ReadResponse against protobuf's own serialization, and the dataclass conversions."""

from __future__ import annotations

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
