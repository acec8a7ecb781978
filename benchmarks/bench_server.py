"""Benchmark: the cache server's write and read paths, under many streams, against baselines in the same run.

1. Realistic records: T = 2048 positions, V = 128256, N = 50 multinomial rounds on LM-like logits
   (``logitcache.targets.synthetic``, ~12 unique tokens per position). A few distinct target sets are
   sampled; every record gets its own random input ids, so all record bytes differ.
2. A real server process (``logitcache serve`` with its defaults: durable acks, LMDB fsyncs every
   commit; commits of concurrent streams are grouped per shard).
3. Writes through ``Write``, batches of ``--batch`` records, timed until the last acknowledgement:
   one writer (the baseline), four threads of ``CacheClient``, and 16 and 64 concurrent writers
   (streams of one asyncio client, :class:`~logitcache.testing.StreamLoad`), one shard
   each (a teacher job's layout), and 64 writers into 4 shards (16 streams per shard: group
   commit). The 1 / 16 / 64 runs are interleaved ``--repeats`` times; medians are reported.
4. ``GetShard`` latency: 200 calls with no other stream open (the baseline), then with 256 idle
   ``Write`` streams and 256 unread ``Read`` streams open; p99 of each.
5. Reads of the whole first shard: (a) the baseline, a raw in-process LMDB cursor scan of the
   same records (no checksum, no network); (b) ``Read`` over loopback into this process as bytes
   (the server verifies every envelope and checksum).
6. The server's start-up import: a fresh interpreter importing the server's entry point
   (``logitcache.apps.cli`` and ``logitcache.server.runner``), against the same import plus
   ``torch`` (what the server imported before its torch-free split); interleaved, medians of 5.

The last line printed is one JSON object. Run: ``python benchmarks/bench_server.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import torch

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.proto.v1 import cache_pb2 as pb
from logitcache.server import layout
from logitcache.targets.sampling import sample_random
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess, StreamLoad

MANY = (16, 64)


def _import_seconds(modules: str) -> float:
    """Wall time of a fresh interpreter importing ``modules`` (its own start-up included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True)
    return time.perf_counter() - start


def _p99_ms(seconds: list[float]) -> float:
    return round(statistics.quantiles(seconds, n=100)[98] * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512, help="records per shard")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--distinct", type=int, default=4, help="distinct target sets to sample")
    parser.add_argument("--batch", type=int, default=16, help="records per write batch")
    parser.add_argument("--many-records", type=int, default=2048, help="records per run of many writers")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of 1 / 16 / 64 writers")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    pool: list[SparseTargets] = []
    for _ in range(args.distinct):
        logits = lm_like_logits(args.seq_len, args.vocab_size, generator=gen)
        pool.append(sample_random(logits, 50, generator=gen))
        del logits
    unique = sum(t.num_entries for t in pool) / (len(pool) * args.seq_len)

    def make_shard(offset: int) -> list[tuple[int, bytes]]:
        out = []
        for seq in range(offset, offset + args.records):
            input_ids = torch.randint(0, args.vocab_size, (args.seq_len,), generator=gen)
            out.append((seq, records.encode(input_ids, pool[seq % len(pool)])))
        return out

    shards = {shard: make_shard(0) for shard in range(5)}
    manifest = ShardManifest(vocab_size=args.vocab_size, method="sampled", rounds=50, seq_len=args.seq_len)
    positions = args.records * args.seq_len
    record_bytes = sum(len(d) for _, d in shards[0])
    payloads = [data for _, data in shards[1][:64]]  # many-writer runs reuse these bytes under new seqs
    next_seq = 1 << 20  # every run writes new seqs: a rewrite of stored bytes would be a no-op

    def plan(writers: int, shard_ids: list[int]) -> list[tuple[int, list[list[tuple[int, bytes]]]]]:
        nonlocal next_seq
        per_writer = args.many_records // writers
        streams = []
        for w in range(writers):
            items = [(next_seq + i, payloads[(w + i) % len(payloads)]) for i in range(per_writer)]
            next_seq += per_writer
            batches = [items[at : at + args.batch] for at in range(0, per_writer, args.batch)]
            streams.append((shard_ids[w % len(shard_ids)], batches))
        return streams

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server = ServerProcess(data_dir, http=False)
        try:
            address = server.address
            many_shards = list(range(100, 100 + max(MANY)))
            with CacheClient(address) as client:
                for shard in [*shards, *many_shards]:
                    client.create_shard(shard, manifest)
                start = time.perf_counter()
                client.write(0, shards[0], batch_records=args.batch)
                write_1 = positions / (time.perf_counter() - start)
            load = StreamLoad(address)
            rates: dict[str, list[float]] = {"1": [], **{str(n): [] for n in MANY}, "64_4_shards": []}
            many_positions = args.many_records * args.seq_len
            for _ in range(args.repeats):  # interleaved: 1, 16, 64 writers, 64 writers into 4 shards
                for key, writers, shard_ids in (
                    ("1", 1, many_shards[:1]),
                    *((str(n), n, many_shards[:n]) for n in MANY),
                    ("64_4_shards", 64, many_shards[:4]),
                ):
                    rates[key].append(many_positions / load.write(plan(writers, shard_ids)))

            def writer(shard: int) -> None:
                with CacheClient(address) as own:
                    own.write(shard, shards[shard], batch_records=args.batch)

            threads = [threading.Thread(target=writer, args=(shard,)) for shard in (1, 2, 3, 4)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            write_4 = 4 * positions / (time.perf_counter() - start)

            def get_shard_seconds() -> list[float]:
                seconds = []
                with CacheClient(address, timeout=30, retries=0) as client:
                    for _ in range(200):
                        start = time.perf_counter()
                        client.get_shard(0)
                        seconds.append(time.perf_counter() - start)
                return seconds

            quiet = get_shard_seconds()
            read_all = pb.ReadRequest(shard=0, ranges=[pb.SeqRange(start=0, end=1 << 62)], max_message_bytes=1)
            load.open_idle(
                [(many_shards[i % len(many_shards)], 1 << 40 | i, payloads[0]) for i in range(256)], [read_all] * 256
            )
            busy = get_shard_seconds()
            load.close()

            with CacheClient(address) as client:
                best_grpc = 0.0
                for _ in range(3):
                    start = time.perf_counter()
                    got = sum(records.peek_positions(data) for _, data in client.read(0, ranges=[(0, 1 << 62)]))
                    best_grpc = max(best_grpc, got / (time.perf_counter() - start))
                    assert got == positions
                info = client.get_shard(0)
            # the baseline: a raw cursor scan of the same LMDB, in this process
            env = lmdb.open(str(layout.shard_dir(data_dir, 0)), readonly=True, lock=False, max_dbs=4)
            db = env.open_db(b"records", create=False)
            best_raw = 0.0
            for _ in range(3):
                start = time.perf_counter()
                with env.begin(db=db) as txn:  # values copied out, as the server's reads do
                    got = sum(records.peek_positions(memoryview(v)[layout.ENVELOPE_BYTES :]) for _, v in txn.cursor())
                best_raw = max(best_raw, got / (time.perf_counter() - start))
            env.close()
        finally:
            server.proc.terminate()  # graceful
            server.proc.wait(timeout=60)

    server_entry = "logitcache.apps.cli, logitcache.server.runner"
    imports: dict[str, list[float]] = {"server": [], "with_torch": []}
    for _ in range(5):  # interleaved
        imports["server"].append(_import_seconds(server_entry))
        imports["with_torch"].append(_import_seconds(f"{server_entry}, torch"))
    result = {
        "records": args.records,
        "seq_len": args.seq_len,
        "unique_per_position": round(unique, 2),
        "record_bytes_per_position": round(record_bytes / positions, 2),
        "read_positions_per_s_raw_lmdb": round(best_raw),
        "read_positions_per_s_grpc": round(best_grpc),
        "ratio_grpc_vs_raw": round(best_grpc / best_raw, 3),
        "write_positions_per_s_1_writer": round(write_1),
        "write_positions_per_s_4_writers": round(write_4),
        "write_positions_per_s_1_stream": round(statistics.median(rates["1"])),
        "write_positions_per_s_16_writers": round(statistics.median(rates["16"])),
        "write_positions_per_s_64_writers": round(statistics.median(rates["64"])),
        "write_positions_per_s_64_writers_4_shards": round(statistics.median(rates["64_4_shards"])),
        "ratio_64_writers_vs_1": round(statistics.median(rates["64"]) / statistics.median(rates["1"]), 3),
        "p99_get_shard_ms_no_streams": _p99_ms(quiet),
        "p99_get_shard_ms_256_idle_streams": _p99_ms(busy),
        "idle_streams": 512,
        "server_import_seconds": round(statistics.median(imports["server"]), 3),
        "server_import_seconds_with_torch": round(statistics.median(imports["with_torch"]), 3),
        "bytes_per_position_on_disk": round(info.disk_bytes / positions, 2),
        "disk_over_record_bytes": round(info.disk_bytes / record_bytes, 3),
        "batch_records": args.batch,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
