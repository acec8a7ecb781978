"""The hand-encoded ReadResponse against protobuf's own serialization, and the dataclass conversions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache import wire
from logitcache.core.manifest import ShardInfo
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
