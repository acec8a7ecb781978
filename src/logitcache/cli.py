"""The ``logitcache`` command.

Subcommands:

* ``logitcache serve`` — the cache server (gRPC; see :mod:`logitcache.server`). Flags override
  ``LOGITCACHE_*`` environment variables, which override the defaults (loopback, ``./logitcache-data``).
* ``logitcache teacher`` — run a Hugging Face causal LM over a corpus and write its sparse targets
  into the cache (see :mod:`logitcache.writer.teacher`); ``torchrun`` splits the work across ranks.
* ``logitcache demo`` — a one-minute guided run on the CPU: a server on ``./logitcache-demo-data``, a tiny
  teacher over a built-in corpus, a student trained from the cache, the viewer until Ctrl-C
  (see :mod:`logitcache.demo`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

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
    demo = sub.add_parser("demo", help="a one-minute guided run: server, teacher, cache, student, viewer")
    demo.add_argument(
        "--data-dir", type=Path, default=Path("logitcache-demo-data"), help="the demo's own data directory"
    )
    demo.add_argument("--grpc", default="127.0.0.1:0", help="gRPC address host:port (default: a free port)")
    demo.add_argument("--http", default="127.0.0.1:0", help="REST API and viewer host:port (default: a free port)")
    demo.add_argument("--quick", "--smoke", action="store_true", help="tiny sizes: a few seconds (tests, CI)")
    demo.add_argument("--no-wait", dest="wait", action="store_false", help="exit after the summary")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from logitcache.demo import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=args.data_dir,
        grpc=args.grpc,
        http=args.http,
        quick=args.quick,
        wait=args.wait,
        seed=args.seed,
        progress=args.progress,
    )
    return run_demo(options)


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
