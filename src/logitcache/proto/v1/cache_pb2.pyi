from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_SAMPLED: _ClassVar[Method]
    METHOD_TOPK: _ClassVar[Method]
METHOD_UNSPECIFIED: Method
METHOD_SAMPLED: Method
METHOD_TOPK: Method

class Manifest(_message.Message):
    __slots__ = ("vocab_size", "method", "rounds", "temperature", "k", "top_p", "seq_len", "teacher", "tokenizer_fingerprint", "run")
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    vocab_size: int
    method: Method
    rounds: int
    temperature: float
    k: int
    top_p: float
    seq_len: int
    teacher: str
    tokenizer_fingerprint: str
    run: TeacherRun
    def __init__(self, vocab_size: _Optional[int] = ..., method: _Optional[_Union[Method, str]] = ..., rounds: _Optional[int] = ..., temperature: _Optional[float] = ..., k: _Optional[int] = ..., top_p: _Optional[float] = ..., seq_len: _Optional[int] = ..., teacher: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., run: _Optional[_Union[TeacherRun, _Mapping]] = ...) -> None: ...

class TeacherRun(_message.Message):
    __slots__ = ("corpus_fingerprint", "sequences", "world_size", "rank", "seq_start", "seq_stop", "seed")
    CORPUS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SEQ_START_FIELD_NUMBER: _ClassVar[int]
    SEQ_STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    corpus_fingerprint: str
    sequences: int
    world_size: int
    rank: int
    seq_start: int
    seq_stop: int
    seed: int
    def __init__(self, corpus_fingerprint: _Optional[str] = ..., sequences: _Optional[int] = ..., world_size: _Optional[int] = ..., rank: _Optional[int] = ..., seq_start: _Optional[int] = ..., seq_stop: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("shard", "manifest", "sealed", "sequences", "positions", "record_bytes", "disk_bytes", "has_sequences", "first_seq", "last_seq", "map_size", "damage", "damaged_records")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    HAS_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DAMAGE_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    manifest: Manifest
    sealed: bool
    sequences: int
    positions: int
    record_bytes: int
    disk_bytes: int
    has_sequences: bool
    first_seq: int
    last_seq: int
    map_size: int
    damage: str
    damaged_records: int
    def __init__(self, shard: _Optional[int] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., sealed: _Optional[bool] = ..., sequences: _Optional[int] = ..., positions: _Optional[int] = ..., record_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., has_sequences: _Optional[bool] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., map_size: _Optional[int] = ..., damage: _Optional[str] = ..., damaged_records: _Optional[int] = ...) -> None: ...

class CreateShardRequest(_message.Message):
    __slots__ = ("shard", "manifest", "exist_ok")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    shard: int
    manifest: Manifest
    exist_ok: bool
    def __init__(self, shard: _Optional[int] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., exist_ok: _Optional[bool] = ...) -> None: ...

class GetShardRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    def __init__(self, shard: _Optional[int] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListShardsResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ...) -> None: ...

class SealShardRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    def __init__(self, shard: _Optional[int] = ...) -> None: ...

class DeleteShardRequest(_message.Message):
    __slots__ = ("shard", "force")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    force: bool
    def __init__(self, shard: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("seq", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    data: bytes
    def __init__(self, seq: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("shard", "records", "overwrite", "batch_id")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    shard: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    overwrite: bool
    batch_id: int
    def __init__(self, shard: _Optional[int] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., overwrite: _Optional[bool] = ..., batch_id: _Optional[int] = ...) -> None: ...

class WriteAck(_message.Message):
    __slots__ = ("batch_id", "shard", "written", "unchanged", "positions")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    shard: int
    written: int
    unchanged: int
    positions: int
    def __init__(self, batch_id: _Optional[int] = ..., shard: _Optional[int] = ..., written: _Optional[int] = ..., unchanged: _Optional[int] = ..., positions: _Optional[int] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("shard", "seqs", "ranges", "has_window", "window_start", "window_end", "max_message_bytes")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    HAS_WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    shard: int
    seqs: _containers.RepeatedScalarFieldContainer[int]
    ranges: _containers.RepeatedCompositeFieldContainer[SeqRange]
    has_window: bool
    window_start: int
    window_end: int
    max_message_bytes: int
    def __init__(self, shard: _Optional[int] = ..., seqs: _Optional[_Iterable[int]] = ..., ranges: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ..., has_window: _Optional[bool] = ..., window_start: _Optional[int] = ..., window_end: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class ListSeqsRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    def __init__(self, shard: _Optional[int] = ...) -> None: ...

class ListSeqsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, runs: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("records_written", "positions_written", "bytes_written", "records_read", "positions_read", "bytes_read", "shards", "uptime_seconds", "errors_by_code")
    class ErrorsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RECORDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_READ_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    records_written: int
    positions_written: int
    bytes_written: int
    records_read: int
    positions_read: int
    bytes_read: int
    shards: int
    uptime_seconds: float
    errors_by_code: _containers.ScalarMap[str, int]
    def __init__(self, records_written: _Optional[int] = ..., positions_written: _Optional[int] = ..., bytes_written: _Optional[int] = ..., records_read: _Optional[int] = ..., positions_read: _Optional[int] = ..., bytes_read: _Optional[int] = ..., shards: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., errors_by_code: _Optional[_Mapping[str, int]] = ...) -> None: ...
