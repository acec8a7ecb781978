"""The ``logitcache`` command: its parser, and where each subcommand's work lives.

Subcommands:

* ``logitcache serve`` — the cache server (gRPC; see :mod:`logitcache.server`). Its flags are the
  fields of :class:`~logitcache.server.settings.ServerSettings`; they override ``LOGITCACHE_*``
  environment variables, which override the defaults (loopback, ``./logitcache-data``).
* ``logitcache verify`` — check every shard of a data directory for damage, read-only, with no
  server running in it (see :mod:`logitcache.server.integrity`). Exit 1 if anything is damaged.
* ``logitcache teacher`` — run a Hugging Face causal LM over a corpus and write its sparse targets
  into the cache (see :mod:`logitcache.apps.teacher`); ``torchrun`` splits the work across ranks.
* ``logitcache shards ls | info | seal | rm`` — list, inspect, seal and delete the shards of running
  servers over gRPC (see :mod:`logitcache.apps.shards`).
* ``logitcache export SHARD... --to DEST`` and ``logitcache import SOURCE...`` — sealed shards to and
  from parquet files in a directory or an object store (see :mod:`logitcache.apps.exports`).
* ``logitcache demo`` — a one-minute guided run on the CPU: a server on ``./logitcache-demo-data``, a tiny
  teacher over a built-in corpus, a student trained from the cache, the viewer until Ctrl-C
  (see :mod:`logitcache.apps.demo`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from logitcache import __version__
from logitcache.apps.corpus import TOKEN_DTYPES
from logitcache.core.config import METHODS

__all__ = ["TEACHER_DTYPES", "main"]

_DESCRIPTION = """\
logitcache: a cache of sparse teacher distributions for offline knowledge distillation.

A teacher runs once over a corpus and stores, for each position, a few sampled token ids
(Sparse Logit Sampling: unbiased, about 12 ids per position); training jobs stream them
back aligned with their tokens into a sparse-KD loss."""
_EPILOG = """\
first steps:
  logitcache demo                      a one-minute guided run, then the viewer
  logitcache serve                     the cache server (gRPC 127.0.0.1:50051, viewer http://127.0.0.1:8080)
  logitcache teacher --model DIR --data corpus.bin
  logitcache shards ls                 what the server holds

`logitcache COMMAND --help` describes each command."""

TEACHER_DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name: the teacher's --dtype


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each flag's default after its help, unless the help says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if not action.option_strings or "default" in text or default in (None, argparse.SUPPRESS, []):
            return text
        if isinstance(default, bool):  # a switch: its default is to be off
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with errors that fit on a screen: the command's usage when it is short, else a pointer to
    its ``--help`` (serve's usage alone is 15 lines), then the message."""

    def error(self, message: str) -> typing.NoReturn:
        usage = self.format_usage()
        if usage.count("\n") > 3:
            usage = f"usage: {self.prog} [options]  (`{self.prog} --help` lists them)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


def _shard_number(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a shard number 0 <= shard < 2**32, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="logitcache", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"logitcache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, parents: Sequence[Any] = ()) -> argparse.ArgumentParser:
        leaf = sub.add_parser(
            name,
            help=summary,
            description=f"{summary}.\n\n{description}",
            formatter_class=_HelpFormatter,
            parents=list(parents),
        )
        leaf.set_defaults(parser_=leaf)
        return leaf

    serve = command(
        "serve",
        "Run the cache server",
        "gRPC for teachers and training jobs; REST, /metrics and the viewer over HTTP. Every flag can also be\n"
        "set as LOGITCACHE_<FLAG> (for example LOGITCACHE_AUTH_TOKEN); a flag wins over the variable.",
    )
    _add_settings_flags(serve)
    verify = command(
        "verify",
        "Check every shard of a data directory for damage",
        "Read-only, with no server running in the directory (it takes the directory's lock). Walks every\n"
        "page of every shard and checks every record's checksum. Exit 1 if anything is damaged.",
    )
    verify.add_argument(
        "--data-dir", type=Path, help="the data directory (default: LOGITCACHE_DATA_DIR, else ./logitcache-data)"
    )
    verify.add_argument("--json", action="store_true", help="one JSON object per shard, one per line")
    teacher = command(
        "teacher",
        "Cache a teacher model's sparse targets over a corpus",
        "Runs a Hugging Face causal LM (a model directory or a GGUF file) over the corpus and streams each\n"
        "sequence's sparse targets to the cache servers. Under torchrun each rank writes its own shard\n"
        "(--shard + rank). Interrupted, the same command resumes where it stopped.",
    )
    _add_teacher_flags(teacher)
    shards = command(
        "shards",
        "List, inspect, seal or delete the shards of running servers",
        "Talks to the servers over gRPC (--server, else LOGITCACHE_SERVER, else 127.0.0.1:50051). Mutations\n"
        "need the server's token when it has one (--auth-token, else LOGITCACHE_AUTH_TOKEN).",
    )
    _add_shards_flags(shards)
    _add_export_flags(command)
    demo = command(
        "demo",
        "A one-minute guided run: server, teacher, cache, student, viewer",
        "On the CPU: a server on its own data directory, a tiny teacher over a built-in corpus, a student\n"
        "trained from the cache, then the viewer until Ctrl-C.",
    )
    demo.add_argument(
        "--data-dir", type=Path, default=Path("logitcache-demo-data"), help="the demo's own data directory"
    )
    demo.add_argument("--grpc", default="127.0.0.1:0", help="gRPC address host:port (port 0: a free port)")
    demo.add_argument("--http", default="127.0.0.1:0", help="REST API and viewer host:port (port 0: a free port)")
    demo.add_argument("--quick", "--smoke", action="store_true", help="tiny sizes: a few seconds (tests, CI)")
    demo.add_argument("--no-wait", dest="wait", action="store_false", help="exit after the summary")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _add_shards_flags(parser: argparse.ArgumentParser) -> None:
    """``shards ls | info | seal | rm``; the connection flags on each action, so they may follow it."""
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection_flags(connection)
    connection.add_argument("--timeout", type=_seconds, default=10.0, help="seconds each call or stream may take")
    connection.add_argument("--json", action="store_true", help="JSON for scripts instead of a table")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        leaf = actions.add_parser(  # no abbreviations: `--f` must not mean --force
            name,
            help=summary,
            description=f"{summary}.",
            parents=[connection],
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
        )
        leaf.set_defaults(parser_=leaf)
        return leaf

    action("ls", "A table of every shard: method, teacher, sequences, positions, bytes per position, sealed, damaged")
    info = action("info", "One shard: its manifest, completeness (which seqs are missing) and sizes")
    info.add_argument("shard", type=_shard_number, help="the shard number")
    info.add_argument(
        "--sample", type=_count, default=100, help="seqs whose targets the means are taken over (0: none)"
    )
    seal = action("seal", "Seal a shard: it takes no more writes, and loaders accept it without a warning")
    seal.add_argument("shard", type=_shard_number, help="the shard number")
    rm = action("rm", "Delete a shard and its files")
    rm.add_argument("shard", type=_shard_number, help="the shard number")
    rm.add_argument("--force", action="store_true", help="delete it even if it is sealed")


def _add_export_flags(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``export`` and ``import`` (:mod:`logitcache.apps.exports`)."""
    both = argparse.ArgumentParser(add_help=False)
    _add_connection_flags(both)
    both.add_argument("--timeout", type=_seconds, default=30.0, help="seconds each call may take")
    both.add_argument("--storage-options", type=_json_object, help="fsspec options for the URL, as a JSON object")
    both.add_argument("--json", action="store_true", help="one JSON object per shard")
    export = command(
        "export",
        "Write sealed shards as parquet files to a directory or an object store",
        "Each shard becomes DEST/shard-NNNNNNNNNN/: parquet files (one row per sequence; Hugging Face\n"
        "datasets, Ray Data, DuckDB and Spark read them) and _export.json, written last.",
        [both],
    )
    export.add_argument("shards", nargs="+", type=_shard_number, metavar="SHARD", help="sealed shard numbers")
    export.add_argument("--to", required=True, metavar="DEST", help="a directory or an fsspec URL (s3://bucket/prefix)")
    export.add_argument("--rows-per-file", type=_count, default=1024, help="sequences per parquet file")
    imp = command(
        "import",
        "Load exported shards back into the servers, byte-identically, and seal them",
        "SOURCE is one shard's export folder or a folder of them. Every row is re-encoded and checked\n"
        "against its record's checksum before it is sent; a failed import leaves no new shard behind.",
        [both],
    )
    imp.add_argument("sources", nargs="+", metavar="SOURCE", help="export folders or fsspec URLs")
    imp.add_argument("--shard", type=_shard_number, help="store it as this shard (default: the exported number)")


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--auth-token``; :func:`_connection` fills them from the environment when absent."""
    parser.add_argument(
        "--server",
        action="append",
        help="cache server host:port; repeat for a cluster (default: LOGITCACHE_SERVER, comma-separated, "
        "else the server's own default)",
    )
    parser.add_argument("--auth-token", help="the servers' token (default: LOGITCACHE_AUTH_TOKEN)")


def _connection(args: argparse.Namespace) -> None:
    """``--server`` and ``--auth-token`` from the environment where the flags are absent (the token never
    becomes a default that ``--help`` would print)."""
    from logitcache.server.settings import ServerSettings

    if args.server is None:
        listed = [a.strip() for a in os.environ.get("LOGITCACHE_SERVER", "").split(",") if a.strip()]
        args.server = listed or [ServerSettings.model_fields["grpc"].default]
    if args.auth_token is None:
        args.auth_token = os.environ.get("LOGITCACHE_AUTH_TOKEN") or None


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    """The ``teacher`` flags (defined here, so that ``--help`` imports neither torch nor transformers)."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path, help="a local Hugging Face causal LM directory")
    model.add_argument("--gguf-file", type=Path, help="or a GGUF checkpoint (dequantised on load; its tokenizer too)")
    parser.add_argument("--data", type=Path, required=True, help="corpus: .bin (nanoGPT), .npy or .jsonl")
    parser.add_argument("--seq-len", type=int, default=1024, help="positions per sequence T")
    parser.add_argument("--token-dtype", choices=TOKEN_DTYPES, default="uint16", help=".bin element type")
    parser.add_argument("--text-key", default="text", help=".jsonl: the field holding the text")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the model's own)")
    _add_connection_flags(parser)
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
        shown = "none" if field.default in (None, []) else field.default
        help_text = f"{field.description} (default: {shown})"
        if annotation is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif typing.get_origin(annotation) is list:  # repeatable
            parser.add_argument(
                flag, action="append", type=typing.get_args(annotation)[0], help=help_text, metavar=name.upper()
            )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    leaf: argparse.ArgumentParser = args.parser_
    if extras:
        leaf.error(_unrecognized(leaf, extras))
    if hasattr(args, "auth_token") and hasattr(args, "server"):
        _connection(args)
    from pydantic import ValidationError

    from logitcache.server.errors import StoreError

    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "shards":
            from logitcache.apps.shards import run

            return run(args)
        if args.command in ("export", "import"):
            from logitcache.apps.exports import run as run_exports

            return run_exports(args)
        if args.command == "teacher":
            import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
            from logitcache.apps.teacher import main as teacher_main

            return teacher_main(args)
    except ImportError as exc:  # an optional dependency (torch, transformers) is not installed
        print(f"{leaf.prog}: {exc}", file=sys.stderr)
    except ValidationError as exc:  # a flag's (or LOGITCACHE_* variable's) value
        leaf.error("; ".join(_flag_error(error) for error in exc.errors()))
    except ValueError as exc:  # a bad argument
        leaf.error(str(exc))
    except (OSError, StoreError) as exc:  # an address or data directory in use, a missing file
        print(f"{leaf.prog}: {exc}", file=sys.stderr)
    return 2


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message, with the closest flag for each unknown one (``--seq_len``: ``--seq-len``)."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hints = []
    for extra in extras:
        name = extra.split("=", 1)[0]
        if name.startswith("-"):
            close = difflib.get_close_matches(name.replace("_", "-"), flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extras)}" + "".join(f"; {hint}" for hint in hints)


def _flag_error(error: Any) -> str:
    """One pydantic error as ``--flag: message``."""
    flag = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-") if error["loc"] else "settings"
    return f"{flag}: {str(error['msg']).removeprefix('Value error, ')}"


def _serve(args: argparse.Namespace) -> int:
    from logitcache.server.runner import serve
    from logitcache.server.settings import ServerSettings

    fields = ServerSettings.model_fields
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return serve(ServerSettings(**overrides))
