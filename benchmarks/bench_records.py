"""Benchmark: sample LM-like teacher distributions and pack them into records.

What it measures, on synthetic LM-like logits (``logitcache.targets.synthetic``: V = 128256, the mass at
each position on ~64 tokens drawn from a global Zipf unigram, sharp enough that N = 50 rounds
give about 12 unique tokens per position):

* the cost of random sampling (multinomial, N = 50) against its baseline, one plain
  ``torch.softmax`` over the same logits, in the same run;
* bytes per position of the fixed-width record (targets only: header share, per-position
  counts, entries; and with the input ids), of the dense (zstd) record, and an order-0 entropy
  lower bound for the same samples (id and count entropies per entry, entry-count entropy per
  position, minus log2(k!) because a position's entries are an unordered set);
* encode and decode throughput (numpy decode into flat ids / values / offsets; torch decode on
  the CPU too), single-threaded numpy;
* the top-k (k = 12) quantiser's error, in the default entries and in the paper's 3-byte entries.

Run: ``python benchmarks/bench_records.py [--records 8] [--seq-len 1024]``. The last line printed
is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import zstandard

from logitcache.core import records
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.sparse import SparseTargets, decode_torch
from logitcache.targets.synthetic import lm_like_logits, zipf_unigram


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _entropy_bits(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _entropy_bound_bytes(targets: list[SparseTargets]) -> float:
    ids = np.concatenate([t.token_ids.numpy() for t in targets])
    counts = np.concatenate([t.values.numpy() for t in targets])
    per_position = np.concatenate([t.entry_counts().numpy() for t in targets])
    order_free = sum(math.lgamma(k + 1) for k in per_position.tolist()) / math.log(2)
    bits = ids.size * (_entropy_bits(ids) + _entropy_bits(counts)) + per_position.size * _entropy_bits(per_position)
    return (bits - order_free) / 8 / per_position.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=8, help="sequences to sample and pack")
    parser.add_argument("--seq-len", type=int, default=1024, help="positions per sequence")
    parser.add_argument("--vocab-size", type=int, default=128256)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shuffled-vocab", action="store_true", help="unigram ranks randomly permuted (no id/frequency order)"
    )
    args = parser.parse_args()
    vocab, seq_len = args.vocab_size, args.seq_len
    gen = torch.Generator().manual_seed(args.seed)
    permutation = torch.randperm(vocab, generator=gen) if args.shuffled_vocab else None
    unigram = zipf_unigram(vocab, permutation=permutation)

    sampled: list[SparseTargets] = []
    inputs: list[torch.Tensor] = []
    topk_targets: list[SparseTargets] = []
    sample_s = softmax_s = 0.0
    for _ in range(args.records):
        logits = lm_like_logits(seq_len, vocab, generator=gen, unigram=unigram)
        softmax_s += _best_of(2, functools.partial(torch.softmax, logits, dim=-1))
        start = time.perf_counter()
        targets = sample_random(logits, args.rounds, generator=gen)
        sample_s += time.perf_counter() - start
        sampled.append(targets)
        topk_targets.append(sample_topk(logits, 12))
        inputs.append(torch.multinomial(unigram, seq_len, replacement=True, generator=gen))
        del logits

    positions = args.records * seq_len
    start = time.perf_counter()
    fixed = [records.encode(ids, t) for ids, t in zip(inputs, sampled, strict=True)]
    encode_s = time.perf_counter() - start
    dense = [records.encode(ids, t, dense=True) for ids, t in zip(inputs, sampled, strict=True)]
    header = records.read_header(fixed[0])
    input_bytes = header.input_id_bytes * seq_len

    def decode_all(blobs: list[bytes]) -> None:
        for blob in blobs:
            records.decode(blob)

    decode_s = _best_of(5, lambda: decode_all(fixed))
    dense_decode_s = _best_of(3, lambda: decode_all(dense))
    torch_decode_s = _best_of(3, lambda: [decode_torch(b) for b in fixed])

    # dense targets only: subtract what the input ids alone compress to with the same codec
    compressor = zstandard.ZstdCompressor(level=3)
    dense_input_bytes = sum(
        len(compressor.compress(records._to_planes(ids.numpy(), header.input_id_bytes))) for ids in inputs
    )

    # top-k (k = 12) quantiser error: default entries (>= 12 value bits) and the paper's 3 bytes (7 bits)
    topk_errors: dict[str, tuple[float, float, int]] = {}
    for label, bits in (("default", None), ("7bit", 7)):
        errors, residual_errors, width = [], [], 0
        for ids, t in zip(inputs, topk_targets, strict=True):
            blob = records.encode(ids, t, topk_value_bits=bits)
            width = records.read_header(blob).entry_bytes
            decoded = SparseTargets.from_record(records.decode(blob))
            errors.append((decoded.values - t.values).abs().max().item())
            residual_errors.append((decoded.residual_mass() - t.residual_mass()).abs().mean().item())
        topk_errors[label] = (max(errors), float(np.mean(residual_errors)), width)

    unique = sum(t.num_entries for t in sampled) / positions
    result = {
        "vocab_size": vocab,
        "shuffled_vocab": args.shuffled_vocab,
        "rounds": args.rounds,
        "positions": positions,
        "unique_per_position": round(unique, 3),
        "bytes_per_entry": header.entry_bytes,
        "bytes_per_position": round(sum(len(b) - input_bytes for b in fixed) / positions, 3),
        "bytes_per_position_total": round(sum(len(b) for b in fixed) / positions, 3),
        "bytes_per_position_dense": round((sum(len(b) for b in dense) - dense_input_bytes) / positions, 3),
        "entropy_bound_bytes": round(_entropy_bound_bytes(sampled), 3),
        "encode_positions_per_s": round(positions / encode_s),
        "decode_positions_per_s": round(positions / decode_s),
        "decode_dense_positions_per_s": round(positions / dense_decode_s),
        "decode_torch_cpu_positions_per_s": round(positions / torch_decode_s),
        "sample_seconds_per_1k_positions": round(sample_s / positions * 1000, 4),
        "softmax_seconds_per_1k_positions": round(softmax_s / positions * 1000, 4),
        "sample_over_softmax": round(sample_s / softmax_s, 3),
        "topk12_bytes_per_entry": topk_errors["default"][2],
        "topk12_max_abs_prob_error": round(topk_errors["default"][0], 6),
        "topk12_mean_abs_residual_error": round(topk_errors["default"][1], 6),
        "topk12_7bit_bytes_per_entry": topk_errors["7bit"][2],
        "topk12_7bit_max_abs_prob_error": round(topk_errors["7bit"][0], 5),
        "topk12_7bit_mean_abs_residual_error": round(topk_errors["7bit"][1], 5),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
