"""Shard manifests: validation, record checks, JSON and protobuf round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitcache import wire
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ManifestMismatchError, ShardManifest, TeacherRun, missing_seqs
from logitcache.targets.sampling import sample
from logitcache.targets.synthetic import lm_like_logits


def _header(config: SamplerConfig, vocab: int = 500, positions: int = 8) -> records.RecordHeader:
    gen = torch.Generator().manual_seed(0)
    targets = sample(lm_like_logits(positions, vocab, generator=gen), config, generator=gen)
    return records.read_header(records.encode(torch.zeros(positions, dtype=torch.int64), targets))


@pytest.mark.parametrize(
    "config",
    [SamplerConfig(rounds=30), SamplerConfig(method="systematic", rounds=7, temperature=0.8),
     SamplerConfig(method="topk", k=9, top_p=0.95), SamplerConfig(method="topk", k=4)],
)  # fmt: skip
def test_for_sampler_accepts_what_the_sampler_writes(config: SamplerConfig) -> None:
    manifest = ShardManifest.for_sampler(config, 500, seq_len=8, teacher="t", tokenizer_fingerprint="f")
    manifest.check(_header(config))
    assert ShardManifest.from_json(manifest.to_json()) == manifest
    back = wire.manifest_from_proto(wire.manifest_to_proto(manifest))
    back.check(_header(config))
    assert (back.method, back.vocab_size, back.seq_len, back.teacher) == (
        "topk" if config.method == "topk" else "sampled",
        500,
        8,
        "t",
    )


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (ShardManifest(vocab_size=501, method="sampled", rounds=30), "vocab_size"),
        (ShardManifest(vocab_size=500, method="sampled", rounds=31), "rounds"),
        (ShardManifest(vocab_size=500, method="sampled", rounds=30, temperature=0.9), "temperature"),
        (ShardManifest(vocab_size=500, method="sampled", rounds=30, seq_len=16), "seq_len"),
        (ShardManifest(vocab_size=500, method="topk", k=30), "method"),
    ],
)
def test_mismatches_name_the_field(manifest: ShardManifest, field: str) -> None:
    with pytest.raises(ManifestMismatchError, match=f"^{field}: ") as info:
        manifest.check(_header(SamplerConfig(rounds=30)))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 1, "method": "sampled", "rounds": 5}, "vocab_size"),
        ({"vocab_size": 10, "method": "beam"}, "method"),
        ({"vocab_size": 10, "method": "sampled"}, "rounds"),
        ({"vocab_size": 10, "method": "topk", "k": 11}, "k: expected 1 <= k <= 10"),
        ({"vocab_size": 10, "method": "topk", "k": 3, "top_p": 0.0}, "top_p"),
        ({"vocab_size": 10, "method": "sampled", "rounds": 5, "seq_len": -1}, "seq_len"),
        ({"vocab_size": 10, "method": "sampled", "rounds": 5, "temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_manifests(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardManifest(**kwargs)  # type: ignore[arg-type]


def test_proto_without_a_method_is_refused() -> None:
    from logitcache.proto.v1 import cache_pb2 as pb

    with pytest.raises(ValueError, match="method: expected METHOD_SAMPLED or METHOD_TOPK"):
        wire.manifest_from_proto(pb.Manifest(vocab_size=10))


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and runs[-1][1] == seq:
            runs[-1] = (runs[-1][0], seq + 1)
        else:
            runs.append((seq, seq + 1))
    return runs


@pytest.mark.parametrize("seed", range(20))
def test_missing_seqs_against_a_set_difference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, 50))
    stop = start + int(rng.integers(0, 200))
    stored = (
        sorted(
            int(s)
            for s in rng.choice(np.arange(start, stop), size=int(rng.integers(0, stop - start + 1)), replace=False)
        )
        if stop > start
        else []
    )
    run = TeacherRun("xxh64:0", sequences=stop, world_size=1, rank=0, seq_start=start, seq_stop=stop, seed=0)
    lacking = sorted(set(range(start, stop)) - set(stored))
    assert missing_seqs(_runs(stored), run, limit=10**6) == (len(lacking), _runs(lacking))
    between = sorted(set(range(stored[0], stored[-1] + 1)) - set(stored)) if stored else []
    assert missing_seqs(_runs(stored), None, limit=10**6) == (len(between), _runs(between))
    count, first = missing_seqs(_runs(stored), run, limit=2)
    assert (count, first) == (len(lacking), _runs(lacking)[:2])
