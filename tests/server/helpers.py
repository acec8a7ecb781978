"""Shared builders for server tests: records that match a manifest, and a running server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import torch

from logitcache import records
from logitcache.client import CacheClient
from logitcache.manifest import ShardManifest
from logitcache.sampling import sample_random, sample_topk
from logitcache.server.grpc_service import RunningServer, create_server
from logitcache.server.settings import ServerSettings
from logitcache.synthetic import lm_like_logits

VOCAB = 3000
SEQ_LEN = 32
MANIFEST = ShardManifest(vocab_size=VOCAB, method="sampled", rounds=20, seq_len=SEQ_LEN, teacher="tiny")
TOPK_MANIFEST = ShardManifest(vocab_size=VOCAB, method="topk", k=5, seq_len=SEQ_LEN)


def make_records(count: int, *, seed: int = 0, start: int = 0, topk: bool = False) -> list[tuple[int, bytes]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for seq in range(start, start + count):
        logits = lm_like_logits(SEQ_LEN, VOCAB, generator=gen)
        targets = sample_topk(logits, 5) if topk else sample_random(logits, 20, generator=gen)
        ids = torch.randint(0, VOCAB, (SEQ_LEN,), generator=gen)
        out.append((seq, records.encode(ids, targets)))
    return out


def corrupt_stored(data_dir: Path, shard: int, seq: int, data: bytes, at: int) -> None:
    """Flip bits of a stored record behind the server's back (it must be stopped)."""
    env = lmdb.open(str(data_dir / "shards" / f"{shard:010d}"), max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"records")) as txn:
        corrupted = bytearray(data)
        corrupted[at] ^= 0x05
        txn.put(seq.to_bytes(8, "big"), bytes(corrupted))
    env.close()


@contextmanager
def running_server(data_dir: Path, **overrides: Any) -> Iterator[tuple[RunningServer, CacheClient]]:
    settings = ServerSettings(data_dir=data_dir, grpc="127.0.0.1:0", workers=8, **overrides)
    server = create_server(settings)
    server.server.start()
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    client = CacheClient(f"127.0.0.1:{server.port}", auth_token=token, timeout=30)
    try:
        yield server, client
    finally:
        client.close()
        server.stop(0)
