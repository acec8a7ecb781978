"""The ``logitcache`` command.

Subcommands:

* ``logitcache serve`` — the cache server (gRPC; see :mod:`logitcache.server`). Flags override
  ``LOGITCACHE_*`` environment variables, which override the defaults (loopback, ``./logitcache-data``).
* ``logitcache teacher`` — run a Hugging Face causal LM over a corpus and write its sparse targets
  into the cache (see :mod:`logitcache.writer.teacher`); ``torchrun`` splits the work across ranks.
* ``logitcache demo`` — an end-to-end run of the core on a random teacher: sample a batch of
  sequences, pack each into a record, decode it back and print what it cost. No server, no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from logitcache import records
from logitcache.sampling import METHODS, SamplerConfig, sample
from logitcache.synthetic import lm_like_logits

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the cache server")
    serve.add_argument("--data-dir", type=Path, help="shard directory (default ./logitcache-data)")
    serve.add_argument("--grpc", help="gRPC address host:port (default 127.0.0.1:50051)")
    serve.add_argument("--http", help="REST API and viewer address host:port, or 'off' (default 127.0.0.1:8080)")
    serve.add_argument("--tokenizer", type=Path, help="a Hugging Face tokenizer.json: REST shows token strings")
    serve.add_argument(
        "--http-reads-need-token", action="store_true", default=None, help="REST reads need the auth token too"
    )
    serve.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    serve.add_argument("--workers", type=int, help="gRPC worker threads (default 16)")
    serve.add_argument("--auth-token", help="require 'authorization: Bearer <token>' on mutating calls")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (serve TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--max-shard-bytes", type=int, help="a shard's size limit (default 1 TiB)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    teacher = sub.add_parser("teacher", help="cache a teacher model's sparse targets over a corpus")
    from logitcache.writer.teacher import add_arguments

    add_arguments(teacher)
    demo = sub.add_parser("demo", help="sample + pack + decode records from a random teacher")
    demo.add_argument("--vocab-size", type=int, default=128256, help="teacher vocabulary size V")
    demo.add_argument("--seq-len", type=int, default=256, help="positions per sequence T")
    demo.add_argument("--sequences", type=int, default=4, help="how many sequences to pack")
    demo.add_argument("--method", choices=METHODS, default="multinomial", help="sampler")
    demo.add_argument("--rounds", type=int, default=50, help="N draws per position (random methods)")
    demo.add_argument("--temperature", type=float, default=1.0, help="proposal temperature t")
    demo.add_argument("--k", type=int, default=12, help="top-k's k")
    demo.add_argument("--seed", type=int, default=0, help="random seed of teacher and sampler")
    return parser


def _demo(args: argparse.Namespace) -> int:
    config = SamplerConfig(method=args.method, rounds=args.rounds, temperature=args.temperature, k=args.k)
    gen = torch.Generator().manual_seed(args.seed)
    total_bytes = 0
    total_entries = 0
    started = time.perf_counter()
    for seq in range(args.sequences):
        logits = lm_like_logits(args.seq_len, args.vocab_size, generator=gen)  # a random "teacher"
        input_ids = torch.randint(0, args.vocab_size, (args.seq_len,), generator=gen)
        targets = sample(logits, config, generator=gen)
        blob = records.encode(input_ids, targets)
        decoded = records.decode(blob)
        if not torch.equal(torch.from_numpy(decoded.token_ids), targets.token_ids):
            print(f"seq {seq}: round trip changed the token ids", file=sys.stderr)
            return 1
        total_bytes += len(blob)
        total_entries += targets.num_entries
        print(
            f"seq {seq}: {targets.num_positions} positions, {targets.num_entries / targets.num_positions:.1f} "
            f"entries/position, record {len(blob)} bytes ({len(blob) / targets.num_positions:.1f} B/position)"
        )
    positions = args.seq_len * args.sequences
    summary = {
        "method": args.method,
        "positions": positions,
        "entries_per_position": round(total_entries / positions, 2),
        "bytes_per_position_total": round(total_bytes / positions, 2),
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "teacher":
            from logitcache.writer.teacher import main as teacher_main

            return teacher_main(args)
    except (ValueError, OSError) as exc:  # bad arguments, or an address in use (pydantic's errors included)
        parser.error(str(exc))
    return 2


def _serve(args: argparse.Namespace) -> int:
    from logitcache.server.runner import serve
    from logitcache.server.settings import ServerSettings

    fields = ServerSettings.model_fields
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return serve(ServerSettings(**overrides))
