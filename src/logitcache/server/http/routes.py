"""The REST endpoints: health and readiness, metrics, the server, shards, sequences, positions, statistics, sealing.

Five routers, so that :func:`~logitcache.server.http.app.create_app` can put the auth check on
exactly the ones that need it: ``ops`` (health, readiness: always open), ``metrics``,
``server_router`` and ``shards`` (reads) and ``admin`` (seal). Store errors are answered by the
app's handler. Token strings are decoded with the tokenizer chosen for the shard
(:func:`~logitcache.server.http.deps.choose_tokenizer`); each answer that carries them says which.
"""

from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from logitcache import __version__
from logitcache.core import records
from logitcache.server import inspect
from logitcache.server.errors import CorruptRecordError
from logitcache.server.http import schemas
from logitcache.server.http.deps import (
    LoadedTokenizer,
    ShardId,
    TokenizerChoice,
    choose_tokenizer,
    get_shard,
    get_shard_tokenizer,
    get_stats,
    get_store,
    get_tokenizers,
    require_json,
)
from logitcache.server.shard import Shard
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["admin", "metrics_router", "ops", "server_router", "shards"]

log = logging.getLogger(__name__)

ops = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])
server_router = APIRouter(prefix="/v1", tags=["server"])
shards = APIRouter(prefix="/v1/shards", tags=["shards"])
admin = APIRouter(prefix="/v1/shards", tags=["shards"])

SeqId = Annotated[int, Path(ge=0, le=2**64 - 2, description="sequence number within the shard")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": schemas.ErrorBody}}
DATA_LOSS: dict[int | str, dict[str, Any]] = {500: {"model": schemas.ErrorBody, "description": "DATA_LOSS: damaged"}}
MAX_GAPS = 100


@ops.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get(
    "/readyz",
    summary="Readiness: the data directory is writable with free space above the floor, and no shard is damaged",
    responses={503: {"model": schemas.ErrorBody, "description": "the reasons, joined by '; '"}},
)
def readyz(store: Annotated[Store, Depends(get_store)]) -> dict[str, str]:
    reasons = store.unready()
    if reasons:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "; ".join(reasons))
    return {"status": "ready"}


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(stats: Annotated[ServerStats, Depends(get_stats)]) -> Response:
    return Response(generate_latest(stats.registry), media_type=CONTENT_TYPE_LATEST)


@server_router.get(
    "/server", summary="This server: version, gRPC address, tokenizers", response_model=schemas.ServerInfo
)
def server_info(
    request: Request, tokenizers: Annotated[list[LoadedTokenizer], Depends(get_tokenizers)]
) -> dict[str, Any]:
    return {
        "version": __version__,
        "grpc_address": request.app.state.grpc_address,
        "writes_need_token": request.app.state.auth_token is not None,
        "tokenizers": [{"name": t.name, "fingerprint": t.fingerprint, "vocab_size": t.vocab_size} for t in tokenizers],
    }


def _choice(choice: TokenizerChoice) -> dict[str, Any]:
    return {"status": choice.status, "fingerprint": choice.fingerprint, "name": choice.name, "detail": choice.detail}


@shards.get("", summary="All shards", response_model=list[schemas.ShardSummary])
def list_shards(store: Annotated[Store, Depends(get_store)]) -> list[dict[str, Any]]:
    return [info.to_dict() for info in store.infos()]


@shards.get(
    "/{shard}", summary="One shard, with its completeness", response_model=schemas.ShardDetail, responses=NOT_FOUND
)
def shard_detail(
    shard: ShardId,
    found: Annotated[Shard, Depends(get_shard)],
    tokenizers: Annotated[list[LoadedTokenizer], Depends(get_tokenizers)],
) -> dict[str, Any]:
    stats = found.stats()
    tokenizer = _choice(choose_tokenizer(tokenizers, stats.manifest))
    completeness = stats.completeness(lambda: itertools.chain.from_iterable(found.seq_runs()), MAX_GAPS)
    return {**stats.to_dict(), **completeness, "tokenizer": tokenizer}


@admin.post(
    "/{shard}/seal",
    summary="Seal a shard: no more writes",
    response_model=schemas.ShardSummary,
    responses={
        **NOT_FOUND,
        **DATA_LOSS,
        400: {"model": schemas.ErrorBody, "description": "the body does not parse as JSON"},
        503: {"model": schemas.ErrorBody, "description": "RESOURCE_EXHAUSTED: the disk is full (Retry-After)"},
        415: {"model": schemas.ErrorBody, "description": "the body is not application/json"},
    },
    dependencies=[Depends(require_json)],
)
def seal(
    shard: ShardId,
    found: Annotated[Shard, Depends(get_shard)],
    body: Annotated[schemas.SealRequest, Body(description="an empty JSON object")],
) -> dict[str, Any]:
    found.seal()
    log.info("shard %d sealed (REST)", shard)
    return found.stats().to_dict()


@shards.get(
    "/{shard}/sequences",
    summary="A page of seqs",
    response_model=schemas.SequencePage,
    responses={**NOT_FOUND, **DATA_LOSS},
)
def sequences(
    shard: ShardId,
    found: Annotated[Shard, Depends(get_shard)],
    start: Annotated[int, Query(ge=0, le=2**64 - 2, description="first seq of the page")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="seqs per page")] = 50,
) -> dict[str, Any]:
    page = found.seqs_page(start, limit + 1)
    more = len(page) > limit
    return {
        "shard": shard,
        "sequences": [{"seq": s, "positions": p} for s, p in page[:limit]],
        "next_start": page[limit][0] if more else None,
    }


def _record_sized(found: Shard, seq: int, stats: ServerStats) -> tuple[records.Record, int]:
    """The decoded record and its stored size in bytes."""
    data = found.get(seq)  # store errors (not found, corrupt, damaged) answer through the app's handler
    try:
        record = records.decode(data)
    except records.RecordError as exc:  # the checksum holds, the content does not
        raise CorruptRecordError(f"seq {seq} of shard {found.shard_id} is corrupted on disk: {exc}") from exc
    stats.read(1, record.header.num_positions, len(data))
    return record, len(data)


def _record(found: Shard, seq: int, stats: ServerStats) -> records.Record:
    return _record_sized(found, seq, stats)[0]


def _decode(tokenizer: Any, ids: list[int]) -> list[str] | None:
    """Token strings; special tokens included (``<|eos|>``), unknown ids as ``<id>``."""
    if tokenizer is None:
        return None
    out = []
    for i in ids:
        text = tokenizer.decode([i], skip_special_tokens=False) or tokenizer.id_to_token(i)
        out.append(text if text else f"<{i}>")
    return out


@shards.get(
    "/{shard}/sequences/{seq}",
    summary="A sequence: input ids and per-position summaries",
    response_model=schemas.SequenceDetail,
    responses={**NOT_FOUND, **DATA_LOSS},
)
def sequence(
    shard: ShardId,
    seq: SeqId,
    found: Annotated[Shard, Depends(get_shard)],
    stats: Annotated[ServerStats, Depends(get_stats)],
    choice: Annotated[TokenizerChoice, Depends(get_shard_tokenizer)],
) -> dict[str, Any]:
    record = _record(found, seq, stats)
    s = inspect.summarize(record)
    input_ids = record.input_ids.tolist()
    decoded = _decode(choice.tokenizer, input_ids)
    tokens: list[str | None] = list(decoded) if decoded is not None else [None] * len(input_ids)
    return {
        "shard": shard,
        "seq": seq,
        "method": record.header.kind,
        "max_entropy": inspect.max_entropy(_max_entries(record.header)),
        "tokenizer": _choice(choice),
        "positions": [
            {
                "pos": pos,
                "input_id": input_ids[pos],
                "token": tokens[pos],
                "entries": int(s.entries[pos]),
                "top_token": int(s.top_token[pos]),
                "top_prob": float(s.top_prob[pos]),
                "entropy": float(s.entropy[pos]),
                "residual": float(s.residual[pos]),
            }
            for pos in range(record.header.num_positions)
        ],
    }


@shards.get(
    "/{shard}/sequences/{seq}/positions/{pos}",
    summary="The sparse distribution at one position",
    response_model=schemas.PositionDetail,
    responses={**NOT_FOUND, **DATA_LOSS},
)
def position(
    shard: ShardId,
    seq: SeqId,
    pos: Annotated[int, Path(ge=0, le=2**32 - 1, description="position within the sequence")],
    found: Annotated[Shard, Depends(get_shard)],
    stats: Annotated[ServerStats, Depends(get_stats)],
    choice: Annotated[TokenizerChoice, Depends(get_shard_tokenizer)],
) -> dict[str, Any]:
    tokenizer = choice.tokenizer
    record = _record(found, seq, stats)
    positions = record.header.num_positions
    if pos >= positions:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"pos {pos} is not in seq {seq} of shard {shard} (T = {positions})"
        )
    ids, probs, counts = inspect.position_entries(record, pos)
    input_id = int(record.input_ids[pos])
    label = int(record.input_ids[pos + 1]) if pos + 1 < positions else None
    decoded = _decode(tokenizer, [input_id] + ([label] if label is not None else []))
    return {
        "shard": shard,
        "seq": seq,
        "pos": pos,
        "method": record.header.kind,
        "tokenizer": _choice(choice),
        "input_id": input_id,
        "input_token": decoded[0] if decoded else None,
        "label": label,
        "label_token": decoded[1] if decoded and label is not None else None,
        "token_ids": ids.tolist(),
        "probs": probs.tolist(),
        "counts": None if counts is None else counts.tolist(),
        "tokens": _decode(tokenizer, ids.tolist()),
        "residual": float(max(0.0, 1.0 - probs.sum())),
    }


@shards.get(
    "/{shard}/stats",
    summary="Statistics over the first sequences of a shard: means and histograms (the viewer's overview)",
    response_model=schemas.ShardStatsBody,
    responses={**NOT_FOUND, **DATA_LOSS},
)
def shard_stats(
    shard: ShardId,
    found: Annotated[Shard, Depends(get_shard)],
    stats: Annotated[ServerStats, Depends(get_stats)],
    sample: Annotated[int, Query(ge=1, le=10000, description="how many sequences to look at")] = 100,
) -> dict[str, Any]:
    found.require_intact()
    manifest = found.manifest
    assert manifest is not None  # an intact shard has one
    acc = inspect.ShardSample.for_manifest(manifest)
    seen = corrupt = 0
    for seq, _ in found.seqs_page(0, sample):
        try:
            acc.add(*_record_sized(found, seq, stats))
        except CorruptRecordError:  # one damaged record is left out (and counted), not the whole overview
            corrupt += 1
            continue
        seen += 1
    means = acc.means()
    return {
        "shard": shard,
        "sampled_sequences": seen,
        "corrupt_sequences": corrupt,
        "positions": acc.positions,
        "unique_tokens_histogram": acc.histogram.tolist(),
        "mean_unique_tokens": means["mean_unique_tokens"],
        "mean_entropy": means["mean_entropy"],
        "mean_label_prob": means["mean_label_prob"],
        "max_entropy": acc.entropy_max,
        "entropy_histogram": _histogram(acc.entropy_edges, acc.entropy_counts, acc.entropy_sum, acc.positions),
        "residual_histogram": _histogram(acc.mass_edges, acc.residual_counts, acc.residual_sum, acc.positions),
        "label_prob_histogram": _histogram(
            acc.mass_edges, acc.label_prob_counts, acc.label_prob_sum, acc.label_positions
        ),
        "bytes_per_position_histogram": _histogram(*acc.bytes_per_position_histogram()),
    }


def _histogram(edges: np.ndarray, counts: np.ndarray, total: float, n: int) -> dict[str, Any]:
    return {"edges": edges.tolist(), "counts": counts.tolist(), "mean": total / n if n else 0.0}


def _max_entries(header: records.RecordHeader) -> int:
    """The most entries a position can hold: N draws (sampled) or k, and never more than V."""
    return min(header.vocab_size, header.rounds if header.kind == "sampled" else header.k)
