"""Conversions between the project's dataclasses and the v1 protobuf messages (server and client share them).

:func:`read_response_bytes` encodes the bulk message, ``ReadResponse``, straight to its wire
bytes: one copy of each record, made in the server's reading thread, instead of a copy into a
message and another when gRPC serializes it on the event loop. It is pinned byte for byte to
``ReadResponse.SerializeToString`` by the tests. :func:`read_response_records` is the client's
inverse: the records of a received message as views into it, with no copy and no protobuf
objects (pinned to ``ReadResponse.FromString``, unknown fields and all).
"""

from __future__ import annotations

import dataclasses

from logitcache.core.config import TargetKind
from logitcache.core.manifest import ShardInfo, ShardManifest, TeacherRun
from logitcache.core.results import BatchAck, StatsSnapshot
from logitcache.proto.v1 import cache_pb2 as pb

__all__ = [
    "MAX_READ_RANGES",
    "MAX_READ_SEQS",
    "batch_ack_from_proto",
    "manifest_from_proto",
    "manifest_to_proto",
    "read_response_bytes",
    "read_response_records",
    "shard_info_from_proto",
    "shard_info_to_proto",
    "stats_from_proto",
]

_METHODS = {"sampled": pb.METHOD_SAMPLED, "topk": pb.METHOD_TOPK}
# what one ReadRequest may ask for (the server refuses more; the client splits longer lists)
MAX_READ_SEQS = 1 << 16
MAX_READ_RANGES = 1 << 12


def manifest_to_proto(manifest: ShardManifest) -> pb.Manifest:
    return pb.Manifest(
        vocab_size=manifest.vocab_size,
        method=_METHODS[manifest.method],
        rounds=manifest.rounds,
        temperature=manifest.temperature,
        k=manifest.k,
        top_p=manifest.top_p or 0.0,
        seq_len=manifest.seq_len,
        teacher=manifest.teacher,
        tokenizer_fingerprint=manifest.tokenizer_fingerprint,
        run=None if manifest.run is None else pb.TeacherRun(**dataclasses.asdict(manifest.run)),
    )


def manifest_from_proto(message: pb.Manifest) -> ShardManifest:
    """Raises ``ValueError`` naming the field for an invalid manifest."""
    method: TargetKind
    if message.method == pb.METHOD_SAMPLED:
        method = "sampled"
    elif message.method == pb.METHOD_TOPK:
        method = "topk"
    else:
        raise ValueError(f"method: expected METHOD_SAMPLED or METHOD_TOPK, got {message.method}")
    sampled = method == "sampled"
    return ShardManifest(
        vocab_size=message.vocab_size,
        method=method,
        rounds=message.rounds if sampled else 0,
        temperature=(message.temperature or 1.0) if sampled else 1.0,
        k=0 if sampled else message.k,
        top_p=None if sampled or message.top_p == 0 else message.top_p,
        seq_len=message.seq_len,
        teacher=message.teacher,
        tokenizer_fingerprint=message.tokenizer_fingerprint,
        run=TeacherRun(**{f.name: getattr(message.run, f.name) for f in dataclasses.fields(TeacherRun)})
        if message.HasField("run")
        else None,
    )


def shard_info_to_proto(info: ShardInfo) -> pb.ShardInfo:
    return pb.ShardInfo(
        shard=info.shard,
        manifest=None if info.manifest is None else manifest_to_proto(info.manifest),
        sealed=info.sealed,
        sequences=info.sequences,
        positions=info.positions,
        record_bytes=info.record_bytes,
        disk_bytes=info.disk_bytes,
        has_sequences=info.first_seq is not None,
        first_seq=info.first_seq or 0,
        last_seq=info.last_seq or 0,
        map_size=info.map_size,
        damage=info.damage or "",
        damaged_records=info.damaged_records,
    )


def shard_info_from_proto(message: pb.ShardInfo) -> ShardInfo:
    return ShardInfo(
        shard=message.shard,
        manifest=manifest_from_proto(message.manifest) if message.HasField("manifest") else None,
        sealed=message.sealed,
        sequences=message.sequences,
        positions=message.positions,
        record_bytes=message.record_bytes,
        disk_bytes=message.disk_bytes,
        first_seq=message.first_seq if message.has_sequences else None,
        last_seq=message.last_seq if message.has_sequences else None,
        map_size=message.map_size,
        damage=message.damage or None,
        damaged_records=message.damaged_records,
    )


def batch_ack_from_proto(message: pb.WriteAck) -> BatchAck:
    return BatchAck(
        batch_id=message.batch_id,
        shard=message.shard,
        written=message.written,
        unchanged=message.unchanged,
        positions=message.positions,
    )


def stats_from_proto(message: pb.StatsResponse) -> StatsSnapshot:
    return StatsSnapshot(
        records_written=message.records_written,
        positions_written=message.positions_written,
        bytes_written=message.bytes_written,
        records_read=message.records_read,
        positions_read=message.positions_read,
        bytes_read=message.bytes_read,
        shards=message.shards,
        uptime_seconds=message.uptime_seconds,
        errors_by_code=dict(message.errors_by_code),
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_RECORDS_TAG = b"\x0a"  # ReadResponse.records: field 1, length-delimited
_SEQ_TAG = b"\x08"  # Record.seq: field 1, varint
_DATA_TAG = b"\x12"  # Record.data: field 2, length-delimited


def read_response_bytes(records: list[tuple[int, bytes]]) -> bytes:
    """``ReadResponse(records=[Record(seq=seq, data=data), ...])`` serialized, as protobuf would."""
    parts: list[bytes] = []
    for seq, data in records:
        head = (_SEQ_TAG + _varint(seq) if seq else b"") + (_DATA_TAG + _varint(len(data)) if data else b"")
        parts += (_RECORDS_TAG, _varint(len(head) + len(data)), head, data)
    return b"".join(parts)


def _read_varint(view: memoryview, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while at < end and shift < 64:
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (2**64 - 1), at
        shift += 7
    raise ValueError(f"ReadResponse: a varint is cut short or too long at byte {at}")


def _skip_field(view: memoryview, tag: int, at: int, end: int) -> int:
    """Past an unknown field's value (wire types 0, 1, 2 and 5; groups are not used by proto3)."""
    kind = tag & 7
    if kind == 0:
        return _read_varint(view, at, end)[1]
    if kind == 2:
        size, at = _read_varint(view, at, end)
        stop = at + size
    elif kind in (1, 5):
        stop = at + (8 if kind == 1 else 4)
    else:
        raise ValueError(f"ReadResponse: unexpected wire type {kind} (tag {tag}) at byte {at}")
    if stop > end:
        raise ValueError(f"ReadResponse: a field runs past its message at byte {at}")
    return stop


def read_response_records(message: bytes | memoryview) -> list[tuple[int, memoryview]]:
    """``[(seq, data), ...]`` of a serialized ``ReadResponse``, ``data`` a read-only view into ``message``.

    Raises ``ValueError`` for bytes that are not a valid ``ReadResponse``.
    """
    view = memoryview(message).toreadonly()
    out: list[tuple[int, memoryview]] = []
    at, end = 0, len(view)
    while at < end:
        tag, at = _read_varint(view, at, end)
        if tag != 0x0A:  # not ReadResponse.records
            at = _skip_field(view, tag, at, end)
            continue
        size, at = _read_varint(view, at, end)
        stop = at + size
        if stop > end:
            raise ValueError(f"ReadResponse: a record runs past the message at byte {at}")
        seq, data = 0, view[at:at]
        while at < stop:
            tag, at = _read_varint(view, at, stop)
            if tag == 0x08:  # Record.seq
                seq, at = _read_varint(view, at, stop)
            elif tag == 0x12:  # Record.data
                length, at = _read_varint(view, at, stop)
                if at + length > stop:
                    raise ValueError(f"ReadResponse: a record's data runs past the record at byte {at}")
                data, at = view[at : at + length], at + length
            else:
                at = _skip_field(view, tag, at, stop)
        out.append((seq, data))
    return out
