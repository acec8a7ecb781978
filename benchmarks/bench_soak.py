"""Soak: 4 writers and 8 readers against one server for a fixed time, every read verified.

1. A real server process (``logitcache serve``, durable acks). Records: T = 256 positions,
   V = 128256, N = 50 multinomial rounds on LM-like logits, a few distinct target sets, each record
   with its own random input ids (so every record's bytes differ).
2. Writers: 4 threads, each streaming its own shard in batches of ``--batch`` records through
   ``CacheClient.write``; a batch's ack latency is the time from the call to its durable ack.
3. Readers: 8 threads, each repeatedly reading ``--batch`` random seqs that have been acknowledged
   (from any shard) with one ``Read``; every record is decoded (checksum, structure) and compared
   byte for byte with what was written. The read-batch latency is one such call.
4. After ``--seconds``: every acknowledged record is read back once more and compared
   (``lost_acked_records`` counts the missing or different ones). ``errors`` counts every exception
   in any thread and every mismatch.

The last line printed is one JSON object. Run: ``python benchmarks/bench_soak.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.core.manifest import ShardManifest
from logitcache.targets.sampling import sample_random
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess

WRITERS = 4
READERS = 8


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    return round(statistics.quantiles(values, n=100)[98] * 1000, 2) if len(values) >= 2 else round(values[0] * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--batch", type=int, default=16, help="records per write batch and per read")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    pool: list[SparseTargets] = [
        sample_random(lm_like_logits(args.seq_len, args.vocab_size, generator=gen), 50, generator=gen) for _ in range(4)
    ]
    manifest = ShardManifest(vocab_size=args.vocab_size, method="sampled", rounds=50, seq_len=args.seq_len)

    written: dict[tuple[int, int], bytes] = {}  # acknowledged records
    acked: list[tuple[int, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    write_lat: list[float] = []
    read_lat: list[float] = []
    records_read = 0

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), http=False)
        address = server.address
        try:
            with CacheClient(address, timeout=60) as admin:
                for shard in range(WRITERS):
                    admin.create_shard(shard, manifest)

            def writer(shard: int) -> None:
                rng = torch.Generator().manual_seed(100 + shard)
                seq = 0
                with CacheClient(address, timeout=60) as client:
                    while not stop.is_set():
                        try:
                            batch = []
                            for _ in range(args.batch):
                                ids = torch.randint(0, args.vocab_size, (args.seq_len,), generator=rng)
                                batch.append((seq, records.encode(ids, pool[seq % len(pool)])))
                                seq += 1
                            started = time.perf_counter()
                            summary = client.write(shard, batch, batch_records=args.batch)
                            elapsed = time.perf_counter() - started
                            if summary.written != len(batch):
                                errors.append(f"shard {shard}: {summary.written} of {len(batch)} written")
                            with lock:
                                write_lat.append(elapsed)
                                for s, data in batch:
                                    written[(shard, s)] = data
                                    acked.append((shard, s))
                        except Exception as exc:
                            errors.append(f"writer {shard}: {type(exc).__name__}: {exc}")

            def reader(index: int) -> None:
                nonlocal records_read
                rnd = random.Random(index)
                with CacheClient(address, timeout=60) as client:
                    while not stop.is_set():
                        with lock:
                            if len(acked) < args.batch:
                                wanted = None
                            else:
                                shard = rnd.randrange(WRITERS)
                                choices = [
                                    k for k in rnd.sample(acked, min(len(acked), 8 * args.batch)) if k[0] == shard
                                ]
                                wanted = (shard, sorted({s for _, s in choices})[: args.batch])
                        if not wanted or not wanted[1]:
                            time.sleep(0.01)
                            continue
                        shard, seqs = wanted
                        try:
                            started = time.perf_counter()
                            got = list(client.read(shard, seqs=seqs))
                            elapsed = time.perf_counter() - started
                            for seq, data in got:
                                records.decode(data)  # checksum and structure
                                if data != written[(shard, seq)]:
                                    errors.append(f"shard {shard} seq {seq}: bytes differ from what was acked")
                            if [s for s, _ in got] != seqs:
                                errors.append(f"shard {shard}: asked {seqs}, got {[s for s, _ in got]}")
                            with lock:
                                read_lat.append(elapsed)
                                records_read += len(got)
                        except Exception as exc:
                            errors.append(f"reader {index}: {type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=writer, args=(s,)) for s in range(WRITERS)]
            threads += [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started

            lost = 0
            with CacheClient(address, timeout=120) as client:
                for shard in range(WRITERS):
                    seqs = sorted(s for sh, s in written if sh == shard)
                    found = dict(client.read(shard, seqs=seqs)) if seqs else {}
                    lost += sum(1 for s in seqs if found.get(s) != written[(shard, s)])
        finally:
            server.stop()

    for line in errors[:10]:
        print(line)
    result = {
        "seconds": round(seconds, 1),
        "writers": WRITERS,
        "readers": READERS,
        "records_written": len(written),
        "records_read": records_read,
        "errors": len(errors),
        "lost_acked_records": lost,
        "p99_read_batch_ms": _p99(read_lat),
        "p99_write_ack_ms": _p99(write_lat),
        "median_read_batch_ms": round(statistics.median(read_lat) * 1000, 2) if read_lat else 0.0,
        "median_write_ack_ms": round(statistics.median(write_lat) * 1000, 2) if write_lat else 0.0,
        "batch_records": args.batch,
        "seq_len": args.seq_len,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
