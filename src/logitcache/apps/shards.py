"""``logitcache shards``: list, inspect, seal and delete the shards of running servers.

Every action talks to the servers over gRPC (:class:`~logitcache.client.CacheClient`), so it sees
exactly what the training jobs see, and goes through the same checks as any other client: a
mutation needs the server's token when it has one, and a sealed shard is deleted only with
``--force``. ``--json`` prints what a script wants instead of a table: ``ls`` one JSON array,
the other actions one object (the fields of :meth:`ShardInfo.to_dict
<logitcache.core.manifest.ShardInfo.to_dict>`, and for ``info`` the completeness too).

Exit status: 0 done; 1 the server refused or could not be reached (one line on stderr says why);
2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import grpc

from logitcache.client import CacheClient, CacheError, NotFoundError, UnavailableError
from logitcache.core import records
from logitcache.core.manifest import ShardInfo
from logitcache.server.inspect import ShardSample

__all__ = ["run"]

MAX_RANGES = 20  # missing ranges `info` lists


def run(args: argparse.Namespace) -> int:
    """Run the action ``args.action`` (see :func:`logitcache.apps.cli._add_shards_flags`)."""
    servers = args.server
    client_log = logging.getLogger("logitcache.client")
    level = client_log.level
    client_log.setLevel(logging.ERROR)  # its warnings (a server that did not answer) end in the one line below
    try:
        with CacheClient(
            servers, auth_token=args.auth_token, timeout=args.timeout, stream_timeout=args.timeout, retries=1
        ) as client:
            return _ACTIONS[args.action](client, args)
    except UnavailableError as exc:
        where = ", ".join(servers)
        print(
            f"logitcache shards {args.action}: cannot reach {where} (is a server running?): {exc.details}",
            file=sys.stderr,
        )
    except CacheError as exc:
        hint = " (add --force)" if args.action == "rm" and "needs force" in exc.details else ""
        print(f"logitcache shards {args.action}: {exc}{hint}", file=sys.stderr)
    finally:
        client_log.setLevel(level)
    return 1


def _ls(client: CacheClient, args: argparse.Namespace) -> int:
    infos = client.list_shards()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos]))
        return 0
    if not infos:
        print(f"no shards on {', '.join(client.addresses)}: `logitcache teacher` fills them")
        return 0
    header = ("SHARD", "METHOD", "TEACHER", "SEQS", "POSITIONS", "B/POS", "SEALED", "DAMAGED")
    rows = [header, *(_row(info) for info in infos)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {0, 3, 4, 5}
    for row in rows:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return 0


def _row(info: ShardInfo) -> tuple[str, ...]:
    m = info.manifest
    damaged = "no" if info.damage is None else "yes"
    if info.damaged_records:
        damaged = f"{damaged}, {info.damaged_records} records"
    return (
        str(info.shard),
        "?" if m is None else m.method_label,
        "?" if m is None else (m.teacher or "-"),
        f"{info.sequences:,}",
        f"{info.positions:,}",
        f"{info.bytes_per_position:.1f}",
        "yes" if info.sealed else "no",
        damaged,
    )


def _info(client: CacheClient, args: argparse.Namespace) -> int:
    # from the listing, which a damaged shard is in too (GetShard answers it with DATA_LOSS)
    info = next((i for i in client.list_shards() if i.shard == args.shard), None)
    if info is None:
        where = ", ".join(client.addresses)
        raise NotFoundError(grpc.StatusCode.NOT_FOUND, f"shard {args.shard} does not exist on {where}")
    completeness = info.completeness(lambda: client.seq_runs(info.shard), MAX_RANGES)
    sample = _sample(client, info, args.sample)
    if args.json:
        print(json.dumps({**info.to_dict(), **completeness, "sample": sample}))
        return 0
    m = info.manifest
    print(f"shard {info.shard} on {client.locate(info.shard)}")
    if info.damage is not None:
        print(f"  DAMAGED: {info.damage}")
    if m is not None:
        print(f"  method       {m.method_label}")
        print(f"  teacher      {m.teacher or '-'}")
        print(f"  vocab size   {m.vocab_size:,}")
        print(f"  seq len      {m.seq_len or 'any'}")
        print(f"  tokenizer    {m.tokenizer_fingerprint or '-'}")
        if m.run is not None:
            r = m.run
            print(f"  corpus       {r.corpus_fingerprint} ({r.sequences:,} sequences)")
            print(
                f"  slice        seqs [{r.seq_start:,}, {r.seq_stop:,}): rank {r.rank} of {r.world_size}, seed {r.seed}"
            )
    print(f"  sealed       {'yes' if info.sealed else 'no'}")
    if completeness["missing"] is None:
        print("  complete     unknown (the shard is damaged)")
    else:
        state = "yes" if completeness["complete"] else "no"
        print(f"  complete     {state}: {info.sequences:,} sequences stored, {completeness['missing']:,} missing")
        for start, end in completeness["gaps"]:
            print(f"    missing seqs [{start:,}, {end:,})")
        if completeness["missing"] and len(completeness["gaps"]) == MAX_RANGES:
            print(f"    (the first {MAX_RANGES} ranges)")
    print(f"  positions    {info.positions:,} ({info.bytes_per_position:.1f} bytes each)")
    print(f"  bytes        {info.record_bytes:,} in records, {info.disk_bytes:,} on disk (map {info.map_size:,})")
    if info.damaged_records:
        print(f"  {info.damaged_records} record(s) failed their checksum when read")
    if sample is not None and sample["sequences"]:
        print(f"  targets      over the first {sample['sequences']:,} seqs, per position:")
        print(f"    unique ids {sample['mean_unique_tokens']:.1f}")
        print(f"    entropy    {sample['mean_entropy']:.3f} nats (at most {sample['max_entropy']:.3f})")
        print(f"    residual   {sample['mean_residual']:.4f} (the mass outside the stored ids)")
        print(f"    next token {sample['mean_label_prob']:.3f} (its target probability)")
    return 0


def _sample(client: CacheClient, info: ShardInfo, count: int) -> dict[str, Any] | None:
    """Means over the targets of the shard's first ``count`` seqs (read as a training job would); None if
    damaged or not asked for. The same figures as REST's ``/v1/shards/{shard}/stats``."""
    if info.damage is not None or info.manifest is None or count == 0 or info.first_seq is None:
        return None
    acc = ShardSample.for_manifest(info.manifest)
    seen = 0
    for _, data in client.read(info.shard, ranges=[(info.first_seq, info.first_seq + count)]):
        acc.add(records.decode(data), len(data))
        seen += 1
    return {"sequences": seen, "max_entropy": acc.entropy_max, **acc.means()}


def _seal(client: CacheClient, args: argparse.Namespace) -> int:
    info = client.seal_shard(args.shard)
    print(json.dumps(info.to_dict()) if args.json else f"shard {info.shard} sealed ({info.sequences:,} sequences)")
    return 0


def _rm(client: CacheClient, args: argparse.Namespace) -> int:
    info = client.delete_shard(args.shard, force=args.force)
    if args.json:
        print(json.dumps(info.to_dict()))
    else:
        sealed = ", sealed" if info.sealed else ""
        print(f"shard {info.shard} deleted ({info.sequences:,} sequences, {info.disk_bytes:,} bytes on disk{sealed})")
    return 0


_ACTIONS = {"ls": _ls, "info": _info, "seal": _seal, "rm": _rm}
