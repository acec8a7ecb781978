"""Shared builders for server tests: records that match a manifest, and a running server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import torch

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.server import layout
from logitcache.server.runner import ServerThread
from logitcache.server.settings import ServerSettings
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.synthetic import lm_like_logits

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


def corrupt_stored(data_dir: Path, shard: int, seq: int, at: int) -> None:
    """Flip bits of byte ``at`` of a stored record, behind the server's back (it must be stopped)."""
    env = lmdb.open(str(data_dir / "shards" / f"{shard:010d}"), max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"records")) as txn:
        key = layout.key_of(seq)
        corrupted = bytearray(txn.get(key) or b"")
        corrupted[layout.ENVELOPE_BYTES + at] ^= 0x05
        txn.put(key, bytes(corrupted))
    env.close()


@contextmanager
def running_server(data_dir: Path, **overrides: Any) -> Iterator[tuple[ServerThread, CacheClient]]:
    """A real server (gRPC on a free loopback port, no HTTP) in a thread of this process, and a client."""
    settings = ServerSettings(data_dir=data_dir, grpc="127.0.0.1:0", http="off", **overrides)
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    with ServerThread(settings) as server, CacheClient(server.address, auth_token=token, timeout=30) as client:
        yield server, client


def run_serve(*flags: str) -> subprocess.CompletedProcess[str]:
    """``logitcache serve FLAGS`` in a subprocess that is expected to stop by itself (a refused start)."""
    return subprocess.run(
        [sys.executable, "-m", "logitcache", "serve", *flags], capture_output=True, text=True, check=False, timeout=120
    )


def self_signed_cert(folder: Path, alt_names: str) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)``: a one-day self-signed certificate for ``alt_names`` (``DNS:localhost,IP:...``)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", f"subjectAltName={alt_names}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
