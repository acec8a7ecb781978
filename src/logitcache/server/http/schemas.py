"""Response models of the REST API (they are the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorBody",
    "Manifest",
    "PositionDetail",
    "PositionSummary",
    "SealRequest",
    "SequenceDetail",
    "SequencePage",
    "SequenceRef",
    "ShardDetail",
    "ShardStatsBody",
    "ShardSummary",
]


class ErrorBody(BaseModel):
    detail: str = Field(examples=["seq 42 is not in shard 0"])


class TeacherRun(BaseModel):
    corpus_fingerprint: str = Field(examples=["xxh64:9c1d…"])
    sequences: int = Field(description="sequences in the whole run, over all ranks", examples=[4096])
    world_size: int = Field(examples=[8])
    rank: int = Field(examples=[0])
    seq_start: int = Field(description="this shard holds the run's seqs [seq_start, seq_stop)", examples=[0])
    seq_stop: int = Field(examples=[512])
    seed: int = Field(examples=[0])


class Manifest(BaseModel):
    vocab_size: int = Field(examples=[128256])
    method: str = Field(examples=["sampled"])
    rounds: int = Field(examples=[50])
    temperature: float = Field(examples=[1.0])
    k: int = Field(examples=[0])
    top_p: float | None = None
    seq_len: int = Field(examples=[2048])
    teacher: str = Field(examples=["meta-llama/Llama-3.2-3B"])
    tokenizer_fingerprint: str = Field(examples=["sha256:1f2e…"])
    run: TeacherRun | None = Field(default=None, description="the teacher run filling the shard (null: none recorded)")


class ShardSummary(BaseModel):
    shard: int = Field(examples=[0])
    manifest: Manifest | None = Field(description="null only for a damaged shard whose manifest cannot be read")
    damage: str | None = Field(description="why the shard's files are damaged; null while intact", examples=[None])
    damaged_records: int = Field(description="records that failed their checksum when read", examples=[0])
    sealed: bool
    sequences: int = Field(examples=[1000])
    positions: int = Field(examples=[2048000])
    record_bytes: int
    disk_bytes: int
    bytes_per_position: float = Field(examples=[42.6])
    first_seq: int | None
    last_seq: int | None


class ShardDetail(ShardSummary):
    missing: int | None = Field(
        description="seqs not stored: of the teacher run's slice when the manifest has one, else between first_seq "
        "and last_seq (null: damaged)",
        examples=[0],
    )
    gaps: list[tuple[int, int]] | None = Field(description="up to 100 missing [start, end) seq ranges", examples=[[]])
    complete: bool | None = Field(description="sealed, and no seq missing (null: damaged)")


class SealRequest(BaseModel):
    """The seal endpoint's body: an empty JSON object (a JSON body keeps cross-origin forms out)."""

    model_config = ConfigDict(extra="forbid")


class SequenceRef(BaseModel):
    seq: int
    positions: int


class SequencePage(BaseModel):
    shard: int
    sequences: list[SequenceRef]
    next_start: int | None = Field(description="pass as ?start= for the next page; null at the end")


class PositionSummary(BaseModel):
    pos: int
    input_id: int
    token: str | None = Field(None, description="decoded input token (with --tokenizer)")
    entries: int
    top_token: int
    top_prob: float
    entropy: float = Field(description="−Σ t log t over the stored entries (nats)")
    residual: float = Field(description="1 − Σ t (top-k: the ghost mass)")


class SequenceDetail(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"description": "One sequence: its input ids and per-position summaries"}
    )

    shard: int
    seq: int
    method: str
    positions: list[PositionSummary]


class PositionDetail(BaseModel):
    shard: int
    seq: int
    pos: int
    input_id: int
    input_token: str | None = None
    label: int | None = Field(description="the next input token: what the student is trained to predict")
    label_token: str | None = None
    token_ids: list[int]
    probs: list[float]
    counts: list[int] | None = Field(None, description="raw counts out of `rounds` (sampled records)")
    tokens: list[str] | None = Field(None, description="decoded token strings (with --tokenizer)")
    residual: float


class ShardStatsBody(BaseModel):
    shard: int
    sampled_sequences: int
    positions: int
    unique_tokens_histogram: list[int] = Field(description="positions by number of stored entries (index = count)")
    mean_unique_tokens: float
    mean_entropy: float
    mean_label_prob: float = Field(description="mean target probability of the next input token")
