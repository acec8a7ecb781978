"""Response models of the REST API (they are the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorBody",
    "Histogram",
    "Manifest",
    "PositionDetail",
    "PositionSummary",
    "SealRequest",
    "SequenceDetail",
    "SequencePage",
    "SequenceRef",
    "ServerInfo",
    "ShardDetail",
    "ShardStatsBody",
    "ShardSummary",
    "TokenizerInfo",
    "TokenizerStatus",
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


class TokenizerInfo(BaseModel):
    name: str = Field(
        description="where it was loaded from: its directory and file name", examples=["Llama-3.2-3B/tokenizer.json"]
    )
    fingerprint: str = Field(examples=["xxh64:9c1d2e3f4a5b6c7d"])
    vocab_size: int | None = Field(examples=[128256])


class ServerInfo(BaseModel):
    version: str
    grpc_address: str | None = Field(description="where writers connect (host:port)", examples=["127.0.0.1:50051"])
    writes_need_token: bool = Field(description="the server has an auth token (--auth-token)")
    tokenizers: list[TokenizerInfo] = Field(description="the tokenizers loaded (--tokenizer)")


class TokenizerStatus(BaseModel):
    """Which loaded tokenizer decodes this shard's ids: the one whose fingerprint its manifest records."""

    status: Literal["matched", "unverified", "none", "mismatch"] = Field(
        description="matched: the fingerprints agree; unverified: the manifest records none and the only loaded "
        "tokenizer is used; mismatch: tokenizers are loaded but none has the shard's fingerprint (ids only); "
        "none: no tokenizer could be picked (ids only)"
    )
    fingerprint: str = Field(description="the manifest's tokenizer fingerprint ('' when it records none)")
    name: str | None = Field(description="the tokenizer used (null: none)")
    detail: str = Field(description="why, for people")


class Histogram(BaseModel):
    edges: list[float] = Field(description="bin edges, one more than counts; bins are [edges[i], edges[i + 1])")
    counts: list[int]
    mean: float = Field(description="the mean of the values binned")


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
    tokenizer: TokenizerStatus


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
    token: str | None = Field(None, description="decoded input token (with the shard's tokenizer)")
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
    max_entropy: float = Field(
        description="log of the most entries a position can hold (N draws or k): the largest entropy a stored "
        "target can have, the top of an absolute entropy scale (nats)"
    )
    tokenizer: TokenizerStatus
    positions: list[PositionSummary]


class PositionDetail(BaseModel):
    shard: int
    seq: int
    pos: int
    method: str
    tokenizer: TokenizerStatus
    input_id: int
    input_token: str | None = None
    label: int | None = Field(description="the next input token: what the student is trained to predict")
    label_token: str | None = None
    token_ids: list[int]
    probs: list[float]
    counts: list[int] | None = Field(None, description="raw counts out of `rounds` (sampled records)")
    tokens: list[str] | None = Field(None, description="decoded token strings (with the shard's tokenizer)")
    residual: float


class ShardStatsBody(BaseModel):
    shard: int
    sampled_sequences: int
    corrupt_sequences: int = Field(description="seqs among the first `sample` left out: their record is corrupted")
    positions: int
    unique_tokens_histogram: list[int] = Field(description="positions by number of stored entries (index = count)")
    mean_unique_tokens: float
    mean_entropy: float
    mean_label_prob: float = Field(description="mean target probability of the next input token")
    max_entropy: float = Field(description="log of the most entries a position can hold (nats): entropy's top edge")
    entropy_histogram: Histogram = Field(description="positions by target entropy, on [0, max_entropy] nats")
    residual_histogram: Histogram = Field(
        description="positions by residual mass 1 − Σ t (top-k: the ghost mass), on [0, 1]"
    )
    label_prob_histogram: Histogram = Field(
        description="positions but the last by the next token's target probability, on [0, 1]"
    )
    bytes_per_position_histogram: Histogram = Field(
        description="sequences by stored bytes / positions, over the range seen"
    )
