"""Benchmark: the cache server's write and read paths against a raw LMDB scan, over loopback.

1. Realistic records: T = 2048 positions, V = 128256, N = 50 multinomial rounds on LM-like logits
   (``logitcache.synthetic``, ~12 unique tokens per position). A few distinct target sets are
   sampled; every record gets its own random input ids, so all record bytes differ.
2. A real server process (``logitcache serve``, durable acks: LMDB fsyncs every batch commit).
3. Writes through ``Write``: one writer into one shard, then four concurrent writers (threads,
   one shard each), batches of ``--batch`` records, timed until the last acknowledgement.
4. Reads of the whole first shard: (a) the baseline, a raw in-process LMDB cursor scan of the
   same records (no checksum, no network); (b) ``Read`` over loopback into this process as bytes
   (the server verifies every checksum).

The last line printed is one JSON object. Run: ``python benchmarks/bench_server.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import torch

from logitcache import records
from logitcache.client import CacheClient
from logitcache.manifest import ShardManifest
from logitcache.sampling import SparseTargets, sample_random
from logitcache.server.process import ServerProcess
from logitcache.synthetic import lm_like_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512, help="records per shard")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--distinct", type=int, default=4, help="distinct target sets to sample")
    parser.add_argument("--batch", type=int, default=16, help="records per write batch")
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

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server = ServerProcess(data_dir, http=False)
        try:
            address = server.address
            with CacheClient(address) as client:
                for shard in shards:
                    client.create_shard(shard, manifest)
                start = time.perf_counter()
                client.write(0, shards[0], batch_records=args.batch)
                write_1 = positions / (time.perf_counter() - start)

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

            with CacheClient(address) as client:
                best_grpc = 0.0
                for _ in range(3):
                    start = time.perf_counter()
                    got = sum(records.peek_positions(data) for _, data in client.read(0, ranges=[(0, 1 << 62)]))
                    best_grpc = max(best_grpc, got / (time.perf_counter() - start))
                    assert got == positions
                info = client.get_shard(0)
            # the baseline: a raw cursor scan of the same LMDB, in this process
            env = lmdb.open(str(data_dir / "shards" / f"{0:010d}"), readonly=True, lock=False, max_dbs=4)
            db = env.open_db(b"records", create=False)
            best_raw = 0.0
            for _ in range(3):
                start = time.perf_counter()
                with env.begin(db=db) as txn:
                    got = sum(records.peek_positions(value) for _, value in txn.cursor())
                best_raw = max(best_raw, got / (time.perf_counter() - start))
            env.close()
        finally:
            server.proc.terminate()  # graceful
            server.proc.wait(timeout=60)

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
        "bytes_per_position_on_disk": round(info.disk_bytes / positions, 2),
        "disk_over_record_bytes": round(info.disk_bytes / record_bytes, 3),
        "batch_records": args.batch,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
