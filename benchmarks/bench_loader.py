"""Benchmark: the training loader and the teacher writer against their baselines, over loopback.

1. Realistic records: T = 2048, V = 128256, N = 50 multinomial rounds on LM-like logits
   (``logitcache.targets.synthetic``, ~13 unique tokens per position); a few distinct target sets, each
   record with its own random input ids. They are written to a real server process
   (``logitcache serve``) on this machine.
2. Loader: ``SparseKDLoader`` (shuffled order, batch 8, prefetch thread, CPU tensors) delivers one
   epoch to a consumer that does nothing. Baseline: the raw ``Read`` stream of the same records as
   bytes (one range request). Each is timed ``--repeats`` times; the best run counts. With a GPU
   also into CUDA tensors: records decoded on the host then copied (pinned, side stream), and
   ``device_decode=True`` (packed bytes copied, decoded on the GPU by ``decode_torch``).
3. The in-memory ceiling: the loader's batch decoder (``decode_batch``: one compiled pass from the
   records' bytes to the padded tensors) over the same records held in memory, against its
   reference (``records.decode`` of each record, then padding in numpy), interleaved batch by
   batch: CPU seconds per million positions (thread time), and ``ratio_loader_vs_ceiling`` (the
   loader's positions/s over the ceiling's). ``loader_cpu_s_per_m_positions`` is the loader's
   process time (the server's is not counted: it is another process).
4. Writer: ``CacheWriter.write`` on teacher logits ``[B, T, V]`` (CPU) against ``sample()`` alone on
   the same logits, interleaved call by call. ``writer_overhead_vs_sampling`` is the median time of
   a ``write`` call on the caller's thread divided by the median time of sampling alone (medians:
   single calls on this 2-core machine stall now and then, either kind); ``_total`` is the ratio
   of the sums. ``writer_positions_per_s`` is positions acknowledged per second of writer time
   (from the first ``write`` to the end of ``close``, the interleaved sampling-alone calls excluded).

The last line printed is one JSON object. Run: ``python benchmarks/bench_loader.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.targets.sampling import sample, sample_random
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDLoader
from logitcache.training.batch_decode import decode_batch, pad_decoded
from logitcache.writer import CacheWriter


def _best(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1024, help="records in the loader's shard")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--distinct", type=int, default=4, help="distinct target sets to sample")
    parser.add_argument("--batch-size", type=int, default=8, help="loader batch (sequences)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writer-batch", type=int, default=4, help="sequences per write() call")
    parser.add_argument("--writer-seq-len", type=int, default=256)
    parser.add_argument("--writer-calls", type=int, default=16)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    pool: list[SparseTargets] = []
    for _ in range(args.distinct):
        logits = lm_like_logits(args.seq_len, args.vocab_size, generator=gen)
        pool.append(sample_random(logits, 50, generator=gen))
        del logits
    unique = sum(t.num_entries for t in pool) / (len(pool) * args.seq_len)
    items = [
        (seq, records.encode(torch.randint(0, args.vocab_size, (args.seq_len,), generator=gen), pool[seq % len(pool)]))
        for seq in range(args.records)
    ]
    positions = args.records * args.seq_len

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), http=False)
        try:
            client = CacheClient(server.address, timeout=120)
            manifest = ShardManifest(vocab_size=args.vocab_size, method="sampled", rounds=50, seq_len=args.seq_len)
            client.create_shard(0, manifest)
            client.write(0, items)
            client.seal_shard(0)

            def raw() -> float:
                started = time.perf_counter()
                got = sum(records.peek_positions(data) for _, data in client.read(0, ranges=[(0, args.records)]))
                assert got == positions
                return time.perf_counter() - started

            loader = SparseKDLoader(client, [0], batch_size=args.batch_size, seed=0)
            widest = 0

            def load() -> float:
                nonlocal widest
                started = time.perf_counter()
                got = 0
                for batch in loader:
                    got += batch.num_positions
                    widest = max(widest, batch.target_ids.shape[2])
                assert got == positions
                return time.perf_counter() - started

            raw_s = _best(args.repeats, raw)
            load_cpu: list[float] = []

            def load_timed() -> float:
                before = time.process_time()  # this process only: the server's CPU is not the trainer's
                seconds = load()
                load_cpu.append(time.process_time() - before)
                return seconds

            load_s = _best(args.repeats, load_timed)
            cuda: dict[str, float] = {}
            if torch.cuda.is_available():
                for name, device_decode in (("host_decode", False), ("device_decode", True)):
                    on_gpu = SparseKDLoader(
                        client, [0], batch_size=args.batch_size, seed=0, device="cuda", device_decode=device_decode
                    )

                    def load_cuda(on_gpu: SparseKDLoader = on_gpu) -> float:
                        started = time.perf_counter()
                        got = sum(batch.num_positions for batch in on_gpu)
                        torch.cuda.synchronize()
                        assert got == positions
                        return time.perf_counter() - started

                    cuda[name] = _best(args.repeats, load_cuda)

            # the writer: time in write() against sampling alone, same logits
            b, t, v = args.writer_batch, args.writer_seq_len, args.vocab_size
            calls = [
                (torch.randint(0, v, (b, t), generator=gen), lm_like_logits(b * t, v, generator=gen).reshape(b, t, v))
                for _ in range(args.writer_calls)
            ]
            config = SamplerConfig(rounds=50)
            sample(calls[0][1].reshape(b * t, v), config)  # warm-up
            writer = CacheWriter(client, 1, config, vocab_size=v, seq_len=t)
            sample_times: list[float] = []
            write_times: list[float] = []
            started = time.perf_counter()
            for i, (ids, logits) in enumerate(calls):  # interleaved: both see the same machine state
                before = time.perf_counter()
                sample(logits.reshape(b * t, v), config, torch.Generator().manual_seed(i))
                sample_times.append(time.perf_counter() - before)
                before = time.perf_counter()
                writer.write(range(i * b, (i + 1) * b), ids, logits)
                write_times.append(time.perf_counter() - before)
            writer.close()
            writer_s = time.perf_counter() - started - sum(sample_times)
            sampling_s = sum(sample_times)
            writer_stats = writer.stats()
            assert writer_stats.positions_acked == args.writer_calls * b * t
            client.close()
        finally:
            server.stop()

    # the in-memory ceiling: the loader's batch decoder against its reference (records.decode, then
    # padding in numpy), interleaved batch by batch over the same records, CPU seconds of this thread
    blobs = [data for _, data in items]
    batches = [blobs[i : i + args.batch_size] for i in range(0, len(blobs), args.batch_size)]
    decode_batch(batches[0])  # compiled (or loaded from numba's cache) before timing
    fast_cpu = reference_cpu = 0.0
    for _ in range(args.repeats):
        for batch_blobs in batches:
            before = time.thread_time()
            decode_batch(batch_blobs)
            middle = time.thread_time()
            pad_decoded([records.decode(blob) for blob in batch_blobs])
            fast_cpu += middle - before
            reference_cpu += time.thread_time() - middle
    per_m = 1e6 / (positions * args.repeats)
    ceiling_cpu = fast_cpu * per_m
    loader_cpu = min(load_cpu) * 1e6 / positions

    result = {
        "records": args.records,
        "seq_len": args.seq_len,
        "vocab_size": args.vocab_size,
        "unique_per_position": round(unique, 2),
        "batch_size": args.batch_size,
        "widest_k": widest,
        "raw_stream_positions_per_s": round(positions / raw_s),
        "loader_positions_per_s": round(positions / load_s),
        "ratio_loader_vs_raw": round(raw_s / load_s, 3),
        "loader_cpu_s_per_m_positions": round(loader_cpu, 3),
        "ceiling_positions_per_s": round(1e6 / ceiling_cpu),
        "ceiling_cpu_s_per_m_positions": round(ceiling_cpu, 3),
        "reference_decode_cpu_s_per_m_positions": round(reference_cpu * per_m, 3),
        "ratio_batch_decode_vs_reference": round(reference_cpu / fast_cpu, 2),
        "ratio_loader_vs_ceiling": round((positions / load_s) / (1e6 / ceiling_cpu), 3),
        "writer_positions_per_s": round(writer_stats.positions_acked / writer_s),
        "writer_bytes_per_position": round(writer_stats.bytes_per_position, 2),
        "sampling_positions_per_s": round(args.writer_calls * b * t / sampling_s),
        "writer_overhead_vs_sampling": round(statistics.median(write_times) / statistics.median(sample_times), 3),
        "writer_overhead_vs_sampling_total": round(sum(write_times) / sampling_s, 3),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["device"] = torch.cuda.get_device_name()
        result["loader_cuda_positions_per_s"] = round(positions / cuda["host_decode"])
        result["loader_cuda_device_decode_positions_per_s"] = round(positions / cuda["device_decode"])
        result["ratio_device_decode_vs_host_decode"] = round(cuda["host_decode"] / cuda["device_decode"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
