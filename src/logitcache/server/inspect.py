"""What the REST API shows about stored records: per-position summaries and shard statistics.

Pure functions over decoded records (numpy, vectorised over positions); no web framework here.
The target probability of an entry is the record's own (``count / N``, importance-weighted when
the record carries weights, or the stored top-k probability). The entropy shown is that of the
sparse target itself, ``−Σ t log t`` over its entries: an estimate of the teacher's entropy that
misses the unsampled tail. A position with ``n`` entries has at most ``log n`` nats, so
:func:`max_entropy` of the most entries a shard's positions can hold (``N`` draws, or ``k``) is an
absolute top for the entropy scale: the same for every sequence of the shard.

:class:`ShardSample` bins what the viewer's overview draws, over fixed ranges so that histograms
from different records add up: entropy on ``[0, max_entropy]``, residual mass and the label's
probability on ``[0, 1]`` (``BINS`` equal bins each); bytes per position (one value per record)
is binned over the range it spans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from logitcache.core.manifest import ShardManifest
from logitcache.core.records import Record

__all__ = ["BINS", "PositionSummary", "ShardSample", "max_entropy", "position_entries", "summarize"]

FloatArray = npt.NDArray[np.floating[Any]]  # float64 here (Record.target_probs(dtype=np.float64))
BINS = 20  # bins of each histogram


def max_entropy(max_entries: int) -> float:
    """``log(max_entries)`` nats: the most entropy a target of that many entries can have (``log 2`` at least)."""
    return math.log(max(2, max_entries))


@dataclass(frozen=True)
class PositionSummary:
    entries: npt.NDArray[np.int64]  # [T] entries per position
    top_token: npt.NDArray[np.int64]  # [T] the entry with the largest target probability
    top_prob: FloatArray  # [T]
    entropy: FloatArray  # [T] −Σ t log t over the entries (nats)
    residual: FloatArray  # [T] 1 − Σ t (top-k: the ghost mass; ~0 when sampled)
    label_prob: FloatArray  # [T] target probability of the next input token (NaN at the last position)


def summarize(record: Record) -> PositionSummary:
    probs = record.target_probs(dtype=np.float64)
    offsets = record.offsets
    starts = offsets[:-1]
    counts = np.diff(offsets)
    positions = record.header.num_positions
    position = np.repeat(np.arange(positions), counts)
    best = np.lexsort((-probs, position))[starts]  # per position, its entries sorted by descending prob
    plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    vocab = record.header.vocab_size
    keys = position * vocab + record.token_ids
    order = np.argsort(keys, kind="stable")
    label_keys = np.arange(positions - 1) * vocab + record.input_ids[1:]
    found = np.searchsorted(keys[order], label_keys)
    found = np.minimum(found, len(keys) - 1)
    hit = keys[order][found] == label_keys
    label_prob = np.full(positions, np.nan)
    label_prob[:-1] = np.where(hit, probs[order][found], 0.0)
    return PositionSummary(
        entries=counts,
        top_token=record.token_ids[best],
        top_prob=probs[best],
        entropy=-np.add.reduceat(plogp, starts),
        residual=np.clip(1.0 - np.add.reduceat(probs, starts), 0.0, 1.0),
        label_prob=label_prob,
    )


def position_entries(
    record: Record, pos: int
) -> tuple[npt.NDArray[np.int64], FloatArray, npt.NDArray[np.int64] | None]:
    """``(token ids, target probs, raw counts or None)`` at ``pos``, by descending probability."""
    lo, hi = int(record.offsets[pos]), int(record.offsets[pos + 1])
    probs = record.target_probs(dtype=np.float64)[lo:hi]
    order = np.argsort(-probs, kind="stable")
    ids = record.token_ids[lo:hi][order]
    counts = record.values[lo:hi][order].astype(np.int64) if record.header.kind == "sampled" else None
    return ids, probs[order], counts


def _binned(values: FloatArray, edges: FloatArray) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the bins of ``edges``; values outside (float noise) go to the end bins."""
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts.astype(np.int64)


@dataclass
class ShardSample:
    """Statistics accumulated over the positions of some records of a shard."""

    max_entries: int  # the most entries a position can hold (N or k)
    histogram: npt.NDArray[np.int64]  # [max_entries + 1] positions by entry count
    entropy_edges: FloatArray  # [BINS + 1] on [0, max_entropy(max_entries)] nats
    mass_edges: FloatArray  # [BINS + 1] on [0, 1]
    entropy_counts: npt.NDArray[np.int64]  # [BINS] positions by entropy
    residual_counts: npt.NDArray[np.int64]  # [BINS] positions by residual (ghost) mass
    label_prob_counts: npt.NDArray[np.int64]  # [BINS] positions (but the last) by the label's target prob
    bytes_per_position: list[float]  # one per record: its stored bytes / its positions
    positions: int = 0
    entropy_sum: float = 0.0
    residual_sum: float = 0.0
    label_prob_sum: float = 0.0
    label_positions: int = 0

    @classmethod
    def empty(cls, max_entries: int) -> ShardSample:
        zeros = np.zeros(BINS, dtype=np.int64)
        return cls(
            max_entries,
            np.zeros(max_entries + 1, dtype=np.int64),
            np.linspace(0.0, max_entropy(max_entries), BINS + 1),
            np.linspace(0.0, 1.0, BINS + 1),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            [],
        )

    @property
    def entropy_max(self) -> float:
        return float(self.entropy_edges[-1])

    def add(self, record: Record, nbytes: int) -> None:
        """Count ``record``'s positions in; ``nbytes`` is its stored size."""
        summary = summarize(record)
        self.histogram += np.bincount(np.minimum(summary.entries, self.max_entries), minlength=self.max_entries + 1)
        self.positions += int(summary.entries.shape[0])
        self.entropy_sum += float(summary.entropy.sum())
        self.residual_sum += float(summary.residual.sum())
        self.entropy_counts += _binned(summary.entropy, self.entropy_edges)
        self.residual_counts += _binned(summary.residual, self.mass_edges)
        labelled = summary.label_prob[~np.isnan(summary.label_prob)]
        self.label_prob_sum += float(labelled.sum())
        self.label_positions += int(labelled.shape[0])
        self.label_prob_counts += _binned(labelled, self.mass_edges)
        self.bytes_per_position.append(nbytes / record.header.num_positions)

    @classmethod
    def for_manifest(cls, manifest: ShardManifest) -> ShardSample:
        """An empty sample for a shard of ``manifest`` (at most N, or k, entries per position)."""
        return cls.empty(min(manifest.vocab_size, manifest.rounds if manifest.method == "sampled" else manifest.k))

    def means(self) -> dict[str, float]:
        """Per position: unique ids, target entropy (nats), residual mass; per labelled position: the label's prob."""
        positions = self.positions or 1
        return {
            "mean_unique_tokens": float(np.dot(np.arange(len(self.histogram)), self.histogram)) / positions,
            "mean_entropy": self.entropy_sum / positions,
            "mean_residual": self.residual_sum / positions,
            "mean_label_prob": self.label_prob_sum / (self.label_positions or 1),
        }

    def bytes_per_position_histogram(self) -> tuple[FloatArray, npt.NDArray[np.int64], float, int]:
        """``(edges [BINS + 1], counts [BINS], sum, records)`` of bytes per position, over the range seen."""
        values = np.asarray(self.bytes_per_position, dtype=np.float64)
        counts, edges = np.histogram(values, bins=BINS)  # all equal or none: numpy centres a unit-wide range
        return edges, counts.astype(np.int64), float(values.sum()), int(values.shape[0])
