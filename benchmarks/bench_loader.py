"""Benchmark: the training loader against the readers a user would pick instead, and the teacher writer.

1. Realistic records: T = 2048, V = 128256, N = 50 multinomial rounds on LM-like logits
   (``logitcache.targets.synthetic``, ~13 unique tokens per position); a few distinct target sets, each
   record with its own random input ids. They are written to a real server process
   (``logitcache serve``) on this machine, and the same targets to the peers' formats.
2. One epoch each, in the same shuffled order (``plan_batches``, batch 8), to a consumer that does
   nothing, the readers interleaved in ``--repeats`` rounds (the best round of each counts):
   - ``loader``: ``SparseKDLoader`` in the training process (CPU tensors);
   - ``loader_workers_2``: the same inside ``DataLoader(num_workers=2, batch_size=None)``;
   - ``arrow``: a Hugging Face ``datasets`` Arrow table of the same targets as flat arrays per
     sequence (input ids, entries per position, token ids, probabilities), memory-mapped from
     disk, each batch taken by index and padded to the same five tensors with vectorised numpy;
     ``arrow_workers_2`` the same as a map-style dataset inside ``DataLoader(num_workers=2)``;
   - ``mds``: mosaicml-streaming ``StreamingDataset`` over MDS shards of the same flat arrays, each
     batch padded as the Arrow peer pads, where it is installed (``pip install --no-deps mosaicml-streaming``:
     its torchvision does not install beside the CPU torch, and is only needed by its image
     datasets; otherwise the JSON says why the row is skipped);
   - ``loader_read_ahead_2`` and the like: the loader with other ``read_ahead`` / ``prefetch``
     settings (``SETTINGS``), against which its defaults were chosen;
   - ``exported``: the shard exported as parquet (``logitcache export``, 128 sequences per file) and read
     by ``ExportedShardReader`` (Hugging Face ``datasets`` streaming, no server), files shuffled;
     ``exported_buffered`` with its default 1024-row shuffle buffer too (in another order than the
     loader's, so its first batch is not compared);
   - ``raw``: the raw ``Read`` stream of the same records as bytes (one range request).
   The first batch of every reader is checked equal to the loader's. CPU seconds per million
   positions are this process's (and the DataLoader workers') user + system time; the server's
   is not counted (another process, as it would be another machine).
3. The in-memory ceiling: the loader's batch decoder (``decode_batch``, one compiled pass from the
   records' bytes to the padded tensors) over the same records held in memory, and its reference
   (``records.decode`` of each record, then padding in numpy), interleaved batch by batch (thread
   CPU time). ``ratio_loader_vs_ceiling`` is the loader's positions/s over the ceiling's.
4. Writer: ``CacheWriter.write`` on teacher logits ``[B, T, V]`` (CPU) against ``sample()`` alone on
   the same logits, interleaved call by call. ``writer_overhead_vs_sampling`` is the median time of
   a ``write`` call on the caller's thread divided by the median time of sampling alone (medians:
   single calls on this 2-core machine stall now and then, either kind); ``_total`` is the ratio
   of the sums. ``writer_positions_per_s`` is positions acknowledged per second of writer time
   (from the first ``write`` to the end of ``close``, the interleaved sampling-alone calls excluded).

The last line printed is one JSON object. Run: ``python benchmarks/bench_loader.py`` (the peers
need the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.targets.sampling import sample, sample_random
from logitcache.targets.sparse import SparseTargets
from logitcache.targets.synthetic import lm_like_logits
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDLoader, plan_batches
from logitcache.training.batch_decode import decode_batch, pad_decoded
from logitcache.writer import CacheWriter

TENSORS = ("input_ids", "labels", "target_ids", "target_probs", "attention_mask")
FLAT_COLUMNS = ("input_ids", "counts", "token_ids", "probs")  # the peers' rows: [T], [T], [E], [E]
# the loader with other read_ahead / prefetch settings, beside its defaults (8 / 4)
SETTINGS: dict[str, dict[str, Any]] = {
    "loader_read_ahead_2": {"read_ahead": 2},
    "loader_read_ahead_32": {"read_ahead": 32},
    "loader_prefetch_1": {"prefetch": 1},
    "loader_prefetch_16": {"prefetch": 16},
}


def _cpu_seconds() -> float:
    """This process's CPU time and that of its children already reaped (DataLoader workers end with
    their epoch; the server, still running, is not counted)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


# ----------------------------------------------------------------------------- the Arrow peer


def arrow_rows(items: list[tuple[int, bytes]]) -> dict[str, list[np.ndarray]]:
    """The records' targets as the flat per-sequence arrays a user would store in a ``datasets`` table."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in FLAT_COLUMNS}
    for _, blob in items:
        record = records.decode(blob)
        columns["input_ids"].append(record.input_ids.astype(np.int32))
        columns["counts"].append(np.diff(record.offsets).astype(np.uint8))
        columns["token_ids"].append(record.token_ids.astype(np.int32))
        columns["probs"].append(record.target_probs(normalize=True).astype(np.float32))
    return columns


def pad_flat(lengths: np.ndarray, flat: dict[str, np.ndarray], ignore_index: int = -100) -> dict[str, Tensor]:
    """A batch's rows, given as the flat arrays of ``arrow_rows`` back to back (``lengths``: each row's
    positions), padded into the loader's five tensors with vectorised numpy: the peers' decoder."""
    b, t = lengths.size, int(lengths.max())
    counts = flat["counts"].astype(np.int64)
    k = int(counts.max())
    row_starts = np.cumsum(lengths) - lengths
    position = np.repeat(np.arange(b) * t - row_starts, lengths) + np.arange(lengths.sum())  # row * t + p
    flat_ids = np.zeros(b * t, dtype=np.int64)
    flat_ids[position] = flat["input_ids"]
    flat_mask = np.zeros(b * t, dtype=bool)
    flat_mask[position] = True
    input_ids, mask = flat_ids.reshape(b, t), flat_mask.reshape(b, t)
    labels = np.full((b, t), ignore_index, dtype=np.int64)
    labels[:, :-1] = np.where(mask[:, 1:], input_ids[:, 1:], ignore_index)
    entry_starts = np.cumsum(counts) - counts
    slot = np.repeat(position * k - entry_starts, counts) + np.arange(counts.sum())  # (row * t + p) * k + j
    target_ids = np.full(b * t * k, -1, dtype=np.int64)
    target_ids[slot] = flat["token_ids"]
    target_probs = np.zeros(b * t * k, dtype=np.float32)
    target_probs[slot] = flat["probs"]
    arrays = [input_ids, labels, target_ids.reshape(b, t, k), target_probs.reshape(b, t, k), mask]
    return {name: torch.from_numpy(a) for name, a in zip(TENSORS, arrays, strict=True)}


def arrow_batch(table: Any) -> dict[str, Tensor]:
    """One batch of rows of the Arrow table (``pyarrow.Table``), its list columns read flat, padded."""
    columns = {name: table.column(name).combine_chunks() for name in FLAT_COLUMNS}
    lengths = np.diff(columns["input_ids"].offsets.to_numpy())
    return pad_flat(lengths, {name: column.flatten().to_numpy() for name, column in columns.items()})


class ArrowBatches(Dataset[dict[str, Tensor]]):
    """The Arrow peer as a map-style dataset of whole batches (for ``DataLoader(batch_size=None)``)."""

    def __init__(self, path: str, plan: list[np.ndarray]) -> None:
        self.path, self.plan = path, plan
        self._table: Any = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if self._table is None:  # opened in the process that reads (memory-mapped)
            import datasets

            self._table = datasets.load_from_disk(self.path).with_format("arrow")
        return arrow_batch(self._table[self.plan[index].tolist()])


# ----------------------------------------------------------------------------- the MDS peer


def _import_streaming() -> Any:
    """``import streaming``, also where torchvision is absent: its package imports ``streaming.vision``,
    which imports two torchvision names at import time and uses them only in the image datasets
    (not used here). Stand-ins for those names exist only during the import."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("streaming") is None:
        raise ImportError("mosaicml-streaming is not installed")
    # streaming imports these; first, for transformers' own torchvision probe not to meet the stand-ins
    import transformers.feature_extraction_utils
    import transformers.tokenization_utils_base  # noqa: F401

    stand_ins: dict[str, Any] = {}
    if importlib.util.find_spec("torchvision") is None:

        def absent(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("torchvision is not installed")

        names = ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional")
        stand_ins = {name: types.ModuleType(name) for name in names}
        stand_ins["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {"__init__": absent})
        stand_ins["torchvision.transforms.functional"].to_tensor = absent
        sys.modules.update(stand_ins)
    try:
        import streaming
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return streaming


def mds_reader(
    tmp: Path, rows: dict[str, list[np.ndarray]], plan: list[np.ndarray]
) -> Callable[[], Iterator[Any]] | str:
    """An epoch over MDS shards of the Arrow peer's rows (ndarray columns) through ``StreamingDataset``,
    each batch's rows fetched by index and padded as the Arrow peer pads; or why it cannot run."""
    try:
        streaming = _import_streaming()
    except ImportError as exc:
        return (
            f"mosaicml-streaming does not import ({exc}): pip install --no-deps mosaicml-streaming "
            "(its torchvision dependency does not install beside the CPU torch)"
        )
    out = tmp / "mds"
    encodings = {name: f"ndarray:{rows[name][0].dtype}" for name in FLAT_COLUMNS}
    with streaming.MDSWriter(out=str(out), columns=encodings, progress_bar=False) as writer:
        for i in range(len(rows["input_ids"])):
            writer.write({name: rows[name][i] for name in FLAT_COLUMNS})

    def epoch() -> Iterator[dict[str, Tensor]]:
        dataset = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=len(plan[0]))
        for batch in plan:
            samples = [dataset[int(i)] for i in batch]
            lengths = np.array([len(sample["input_ids"]) for sample in samples])
            yield pad_flat(lengths, {name: np.concatenate([x[name] for x in samples]) for name in FLAT_COLUMNS})

    return epoch


# ----------------------------------------------------------------------------- the run


def _epoch(batches: Iterable[Any], positions: int) -> Any:
    first, got = None, 0
    for batch in batches:
        mask = batch["attention_mask"]
        got += int(mask.sum())
        if first is None:
            first = {name: batch[name] for name in TENSORS}
    assert got == positions, (got, positions)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1024, help="records in the loader's shard")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--distinct", type=int, default=4, help="distinct target sets to sample")
    parser.add_argument("--batch-size", type=int, default=8, help="loader batch (sequences)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every reader")
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
    plan = plan_batches(args.records, batch_size=args.batch_size, seed=0, epoch=0)
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    firsts: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), http=False)
        try:
            client = CacheClient(server.address, timeout=120)
            manifest = ShardManifest(vocab_size=args.vocab_size, method="sampled", rounds=50, seq_len=args.seq_len)
            client.create_shard(0, manifest)
            client.write(0, items)
            client.seal_shard(0)
            loader = SparseKDLoader(client, [0], batch_size=args.batch_size, seed=0)
            rows = arrow_rows(items)
            mds = mds_reader(Path(tmp), rows, plan)

            def raw() -> None:
                got = sum(records.peek_positions(data) for _, data in client.read(0, ranges=[(0, args.records)]))
                assert got == positions

            readers: dict[str, Callable[[], Any]] = {
                "loader": lambda: _epoch(loader, positions),
                "loader_workers_2": lambda: _epoch(DataLoader(loader, batch_size=None, num_workers=2), positions),
            }
            for name, options in SETTINGS.items():  # the defaults are read_ahead=8, prefetch=4
                variant = SparseKDLoader(client, [0], batch_size=args.batch_size, seed=0, **options)
                readers[name] = functools.partial(_epoch, variant, positions)
            try:
                import datasets
            except ImportError as exc:
                skipped["arrow"] = f"Hugging Face datasets does not import ({exc}): pip install -e '.[bench]'"
            else:
                datasets.disable_progress_bars()
                arrow_path = str(Path(tmp) / "arrow")
                datasets.Dataset.from_dict(rows).save_to_disk(arrow_path)
                arrow_table = datasets.load_from_disk(arrow_path).with_format("arrow")
                readers["arrow"] = lambda: _epoch((arrow_batch(arrow_table[b.tolist()]) for b in plan), positions)
                readers["arrow_workers_2"] = lambda: _epoch(
                    DataLoader(ArrowBatches(arrow_path, plan), batch_size=None, num_workers=2), positions
                )
                from logitcache.exports.files import export_shard
                from logitcache.exports.reader import ExportedShardReader

                export_shard(client, 0, str(Path(tmp) / "exported"), rows_per_file=128)
                for name, buffer in (("exported", 0), ("exported_buffered", 1024)):
                    exported = ExportedShardReader(
                        str(Path(tmp) / "exported"),
                        batch_size=args.batch_size,
                        shuffle_buffer=buffer,
                        rank=0,
                        world_size=1,
                    )
                    readers[name] = functools.partial(lambda r: _epoch(r, positions) and None, exported)
            readers["raw"] = raw
            if isinstance(mds, str):
                skipped["mds"] = mds
            else:
                readers["mds"] = lambda: _epoch(mds(), positions)
            decode_batch([items[0][1]])  # compiled (or loaded from numba's cache) before timing
            for _ in range(args.repeats):  # interleaved: every reader sees the same machine state
                for name, read in readers.items():
                    before_cpu, before = _cpu_seconds(), time.perf_counter()
                    first = read()
                    walls.setdefault(name, []).append(time.perf_counter() - before)
                    cpus.setdefault(name, []).append(_cpu_seconds() - before_cpu)
                    if first is not None:
                        firsts.setdefault(name, first)
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

                    cuda[name] = min(load_cuda() for _ in range(args.repeats))

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

    # the first batch of every reader is the loader's
    for name, first in firsts.items():
        for tensor in TENSORS:
            assert torch.equal(first[tensor], firsts["loader"][tensor]), (name, tensor)

    # the in-memory ceiling: the loader's batch decoder against its reference (records.decode, then
    # padding in numpy), interleaved batch by batch over the same records, CPU seconds of this thread
    blobs = [data for _, data in items]
    batches = [[blobs[i] for i in batch] for batch in plan]
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
    ceiling_rate = 1e6 / ceiling_cpu
    rate = {name: positions / min(w) for name, w in walls.items()}
    cpu = {name: min(c) * 1e6 / positions for name, c in cpus.items()}

    result: dict[str, Any] = {
        "records": args.records,
        "seq_len": args.seq_len,
        "vocab_size": args.vocab_size,
        "unique_per_position": round(unique, 2),
        "batch_size": args.batch_size,
        "widest_k": int(firsts["loader"]["target_ids"].shape[2]),
        "repeats": args.repeats,
    }
    for name in readers:
        result[f"{name}_positions_per_s"] = round(rate[name])
        result[f"{name}_cpu_s_per_m_positions"] = round(cpu[name], 3)
    for suffix in ("", "_workers_2"):
        if "arrow" in rate:
            result[f"ratio_loader_vs_arrow{suffix}"] = round(rate[f"loader{suffix}"] / rate[f"arrow{suffix}"], 3)
            result[f"cpu_ratio_loader_vs_arrow{suffix}"] = round(cpu[f"loader{suffix}"] / cpu[f"arrow{suffix}"], 3)
        result[f"ratio_loader_vs_ceiling{suffix}"] = round(rate[f"loader{suffix}"] / ceiling_rate, 3)
    result["ratio_workers_2_vs_in_process"] = round(rate["loader_workers_2"] / rate["loader"], 3)
    if "exported" in rate:
        result["ratio_loader_vs_exported"] = round(rate["loader"] / rate["exported"], 3)
        result["cpu_ratio_loader_vs_exported"] = round(cpu["loader"] / cpu["exported"], 3)
    if "mds" in rate:
        result["ratio_loader_vs_mds"] = round(rate["loader"] / rate["mds"], 3)
    result |= {
        "ceiling_positions_per_s": round(ceiling_rate),
        "ceiling_cpu_s_per_m_positions": round(ceiling_cpu, 3),
        "reference_decode_cpu_s_per_m_positions": round(reference_cpu * per_m, 3),
        "ratio_batch_decode_vs_reference": round(reference_cpu / fast_cpu, 2),
        "ratio_loader_vs_raw": round(rate["loader"] / rate["raw"], 3),
        "writer_positions_per_s": round(writer_stats.positions_acked / writer_s),
        "writer_bytes_per_position": round(writer_stats.bytes_per_position, 2),
        "sampling_positions_per_s": round(args.writer_calls * b * t / sampling_s),
        "writer_overhead_vs_sampling": round(statistics.median(write_times) / statistics.median(sample_times), 3),
        "writer_overhead_vs_sampling_total": round(sum(write_times) / sampling_s, 3),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    result |= {f"{name}_skipped": why for name, why in skipped.items()}
    if cuda:
        result["device"] = torch.cuda.get_device_name()
        result["loader_cuda_positions_per_s"] = round(positions / cuda["host_decode"])
        result["loader_cuda_device_decode_positions_per_s"] = round(positions / cuda["device_decode"])
        result["ratio_device_decode_vs_host_decode"] = round(cuda["host_decode"] / cuda["device_decode"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
