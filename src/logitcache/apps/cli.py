"""The ``logitcache`` command.

Subcommands:

* ``logitcache serve`` — the cache server (gRPC; see :mod:`logitcache.server`). Its flags are the
  fields of :class:`~logitcache.server.settings.ServerSettings`; they override ``LOGITCACHE_*``
  environment variables, which override the defaults (loopback, ``./logitcache-data``).
* ``logitcache verify`` — check every shard of a data directory for damage, read-only, with no
  server running in it (see :mod:`logitcache.server.integrity`). Exit 1 if anything is damaged.
* ``logitcache teacher`` — run a Hugging Face causal LM over a corpus and write its sparse targets
  into the cache (see :mod:`logitcache.apps.teacher`); ``torchrun`` splits the work across ranks.
* ``logitcache demo`` — a one-minute guided run on the CPU: a server on ``./logitcache-demo-data``, a tiny
  teacher over a built-in corpus, a student trained from the cache, the viewer until Ctrl-C
  (see :mod:`logitcache.apps.demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from logitcache.apps.corpus import TOKEN_DTYPES
from logitcache.core.config import METHODS

__all__ = ["TEACHER_DTYPES", "main"]

TEACHER_DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name: the teacher's --dtype


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the cache server")
    _add_settings_flags(serve)
    verify = sub.add_parser("verify", help="check every shard of a data directory for damage (read-only)")
    verify.add_argument(
        "--data-dir", type=Path, help="the data directory (default: LOGITCACHE_DATA_DIR, else ./logitcache-data)"
    )
    verify.add_argument("--json", action="store_true", help="one JSON object per shard, one per line")
    teacher = sub.add_parser("teacher", help="cache a teacher model's sparse targets over a corpus")
    _add_teacher_flags(teacher)
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


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    """The ``teacher`` flags (defined here, so that ``--help`` imports neither torch nor transformers)."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path, help="a local Hugging Face causal LM directory")
    model.add_argument("--gguf-file", type=Path, help="or a GGUF checkpoint (dequantised on load; its tokenizer too)")
    parser.add_argument("--data", type=Path, required=True, help="corpus: .bin (nanoGPT), .npy or .jsonl")
    parser.add_argument("--seq-len", type=int, default=1024, help="positions per sequence T (default 1024)")
    parser.add_argument("--token-dtype", choices=TOKEN_DTYPES, default="uint16", help=".bin element type")
    parser.add_argument("--text-key", default="text", help=".jsonl: the field holding the text")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the model's own)")
    parser.add_argument(
        "--server", action="append", help="cache server host:port; repeat for a cluster (default 127.0.0.1:50051)"
    )
    parser.add_argument("--auth-token", default=os.environ.get("LOGITCACHE_AUTH_TOKEN"), help="the servers' token")
    parser.add_argument("--shard", type=int, default=0, help="shard id of rank 0; rank r writes --shard + r")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward pass")
    parser.add_argument("--sampler", choices=METHODS, default="multinomial", help="how to sparsify")
    parser.add_argument("--rounds", type=int, default=50, help="N draws per position (random sampling)")
    parser.add_argument("--temperature", type=float, default=1.0, help="proposal temperature t")
    parser.add_argument("--top-k", type=int, default=12, help="k of --sampler topk (the baseline)")
    parser.add_argument("--top-p", type=float, help="also truncate top-k at this mass")
    parser.add_argument("--dtype", choices=[*TEACHER_DTYPES, "auto"], default="auto", help="auto: bfloat16 on CUDA")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--limit", type=int, help="use only the first N sequences of the corpus")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (seq s of shard h: seeded by seed, h, s)")
    parser.add_argument(
        "--teacher-name", help="the manifest's teacher (default: the model directory's or GGUF file's name)"
    )
    parser.add_argument(
        "--no-seal", dest="seal", action="store_false", help="leave the shard open when every sequence is stored"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ServerSettings` field, with its description and default."""
    from logitcache.server.settings import ServerSettings

    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation: Any = field.annotation
        if isinstance(annotation, types.UnionType):  # X | None: the flag takes an X
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        shown = "none" if field.default is None else field.default
        help_text = f"{field.description} (default {shown})"
        if annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            kind: type = annotation if annotation in (int, float, Path) else str
            parser.add_argument(flag, type=kind, help=help_text, metavar=name.upper())


def _verify(args: argparse.Namespace) -> int:
    from logitcache.server.errors import StoreError
    from logitcache.server.integrity import verify_data_dir
    from logitcache.server.settings import ServerSettings

    data_dir = args.data_dir or ServerSettings().data_dir
    try:
        reports = verify_data_dir(data_dir)
    except StoreError as exc:  # a server runs in it
        print(f"logitcache verify: {exc}; stop it, or verify a copy of the directory", file=sys.stderr)
        return 2
    for report in reports:
        if args.json:
            print(json.dumps(report.to_dict()))
            continue
        state = "ok" if report.ok else "DAMAGED"
        print(f"shard {report.shard}: {state}, {report.records} records read ({report.path})")
        for problem in report.problems:
            print(f"  {problem}")
        if report.damaged_records:
            print(f"  {report.damaged_records} damaged record(s):")
            for seq, why in report.damaged:
                print(f"    seq {seq}: {why}")
    if not args.json:
        damaged = sum(not r.ok for r in reports)
        print(f"{len(reports)} shard(s) checked in {data_dir}: {damaged} damaged")
    return 0 if all(r.ok for r in reports) else 1


def _demo(args: argparse.Namespace) -> int:
    import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
    from logitcache.apps.demo import DemoOptions, run_demo

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
        if args.command == "verify":
            return _verify(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "teacher":
            import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
            from logitcache.apps.teacher import main as teacher_main

            return teacher_main(args)
    except ImportError as exc:  # an optional dependency (torch, transformers) is not installed
        print(f"logitcache {args.command}: {exc}", file=sys.stderr)
    except (ValueError, OSError) as exc:  # bad arguments, or an address in use (pydantic's errors included)
        parser.error(str(exc))
    return 2


def _serve(args: argparse.Namespace) -> int:
    from logitcache.server.runner import serve
    from logitcache.server.settings import ServerSettings

    fields = ServerSettings.model_fields
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return serve(ServerSettings(**overrides))
