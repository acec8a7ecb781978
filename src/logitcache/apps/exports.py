"""``logitcache export`` and ``logitcache import``: sealed shards to and from parquet (see :mod:`logitcache.exports`).

``export SHARD... --to DEST`` writes each sealed shard as ``DEST/shard-NNNNNNNNNN/`` (a local path
or an fsspec URL such as ``s3://bucket/prefix``); ``import SOURCE...`` loads each complete export
found at ``SOURCE`` back into the servers, byte-identically. Object-store credentials and endpoints
come from the environment as the store's own library reads them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ...), or from ``--storage-options`` (fsspec's options, as JSON). ``--json``
prints one JSON object per shard.

Exit status: 0 done; 1 the server refused or could not be reached; 2 bad input (usage, an unsealed
shard, an export already there, a folder that is not a complete export, a changed or damaged file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from logitcache.client import CacheClient, CacheError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``args.command`` (``export`` or ``import``) with the flags of :mod:`logitcache.apps.cli`."""
    from logitcache.exports.files import export_shard, exported_folders, import_shard

    options: dict[str, Any] | None = args.storage_options
    try:
        with CacheClient(args.server, auth_token=args.auth_token, timeout=args.timeout) as client:
            if args.command == "export":
                for shard in args.shards:
                    summary: Any = export_shard(
                        client, shard, args.to, rows_per_file=args.rows_per_file, storage_options=options
                    )
                    _report(
                        args,
                        summary,
                        f"shard {shard}: {summary.sequences} sequences in {summary.files} files "
                        f"({summary.bytes:,} bytes of parquet) at {summary.folder}",
                    )
                return 0
            folders = [folder for source in args.sources for folder in exported_folders(source, options)]
            if args.shard is not None and len(folders) != 1:
                raise ValueError(f"--shard names one shard, but {len(folders)} exports were found: import one by one")
            for folder in folders:
                summary = import_shard(folder, client, shard=args.shard, storage_options=options)
                _report(
                    args,
                    summary,
                    f"{folder}: shard {summary.shard}, {summary.written} records stored, "
                    f"{summary.unchanged} already there; sealed",
                )
            return 0
    except CacheError as exc:
        print(f"logitcache {args.command}: {exc}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace, summary: Any, line: str) -> None:
    print(json.dumps(dataclasses.asdict(summary)) if args.json else line, flush=True)
