"""A shard's manifest: what every record stored in the shard must agree with.

Fixed when the shard is created; the server refuses a record whose header disagrees (vocabulary,
method and its parameters, sequence length). The teacher name and tokenizer fingerprint are
what a training job checks before trusting the shard's input ids (paper D.3: teacher and
student must see exactly the same token sequences). A shard that ``logitcache teacher`` fills
also records its :class:`TeacherRun`: the corpus, the run's split and the slice of seqs it holds,
so that a rerun that would split differently is refused and a loader can find seqs stored twice.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from logitcache.core.config import MAX_ROUNDS, MAX_VOCAB_SIZE, SamplerConfig, TargetKind
from logitcache.core.records import RecordHeader

__all__ = ["ManifestMismatchError", "ShardInfo", "ShardManifest", "TeacherRun", "missing_seqs"]

log = logging.getLogger(__name__)


class ManifestMismatchError(ValueError):
    """A record disagrees with its shard's manifest. ``field`` names what differs."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _f32(value: float) -> float:
    return float(np.float32(value))


@dataclass(frozen=True)
class TeacherRun:
    """The teacher run that fills a shard (rank ``rank`` of ``world_size``): seqs ``[seq_start, seq_stop)``."""

    corpus_fingerprint: str  # identifies the run's token sequences (apps.corpus.corpus_fingerprint)
    sequences: int  # sequences in the whole run, over all ranks
    world_size: int
    rank: int
    seq_start: int
    seq_stop: int
    seed: int  # sampling seed: seq s of shard h is drawn with writer.sequence_seed(seed, h, s)

    def __post_init__(self) -> None:
        if not 1 <= self.world_size < 2**32 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"run.rank: expected 0 <= rank < world_size, got {self.rank}, {self.world_size}")
        if not 0 <= self.seq_start <= self.seq_stop <= self.sequences < 2**64:
            raise ValueError(
                f"run.seq_start: expected 0 <= seq_start <= seq_stop <= sequences, "
                f"got {self.seq_start}, {self.seq_stop}, {self.sequences}"
            )
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"run.seed: expected 0 <= seed < 2**64, got {self.seed}")
        if len(self.corpus_fingerprint) > 1024:
            raise ValueError("run.corpus_fingerprint: expected at most 1024 characters")


@dataclass(frozen=True)
class ShardManifest:
    """Validated on construction (``ValueError`` naming the field)."""

    vocab_size: int  # V
    method: TargetKind  # "sampled" | "topk"
    rounds: int = 0  # sampled: N draws per position
    temperature: float = 1.0  # sampled: proposal temperature t
    k: int = 0  # top-k: entries per position
    top_p: float | None = None  # top-k: top-p truncation
    seq_len: int = 0  # positions per record; 0 = any
    teacher: str = ""  # teacher model name or path
    tokenizer_fingerprint: str = ""  # identifies the tokenizer of the input ids
    run: TeacherRun | None = None  # the teacher run filling the shard (None: not recorded)

    def __post_init__(self) -> None:
        run: object = self.run
        if isinstance(run, dict):  # from JSON
            object.__setattr__(self, "run", TeacherRun(**run))
        # the wire and the records carry float32: store what survives the round trip
        object.__setattr__(self, "temperature", _f32(self.temperature))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", _f32(self.top_p))
        if not 2 <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size: expected 2 <= V <= {MAX_VOCAB_SIZE}, got {self.vocab_size}")
        if self.method not in ("sampled", "topk"):
            raise ValueError(f"method: expected 'sampled' or 'topk', got {self.method!r}")
        if self.method == "sampled":
            if not 1 <= self.rounds <= MAX_ROUNDS:
                raise ValueError(f"rounds: expected 1 <= N <= {MAX_ROUNDS} for a sampled shard, got {self.rounds}")
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ValueError(f"temperature: expected a finite value > 0, got {self.temperature}")
        else:
            if not 1 <= self.k <= min(self.vocab_size, MAX_ROUNDS):
                raise ValueError(f"k: expected 1 <= k <= {min(self.vocab_size, MAX_ROUNDS)}, got {self.k}")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise ValueError(f"top_p: expected 0 < top_p <= 1, got {self.top_p}")
        if self.seq_len < 0:
            raise ValueError(f"seq_len: expected >= 0, got {self.seq_len}")
        for name in ("teacher", "tokenizer_fingerprint"):
            if len(getattr(self, name)) > 1024:
                raise ValueError(f"{name}: expected at most 1024 characters")

    @classmethod
    def for_sampler(
        cls,
        config: SamplerConfig,
        vocab_size: int,
        *,
        seq_len: int = 0,
        teacher: str = "",
        tokenizer_fingerprint: str = "",
        run: TeacherRun | None = None,
    ) -> ShardManifest:
        """The manifest for records that ``config`` produces."""
        topk = config.method == "topk"
        return cls(
            vocab_size=vocab_size,
            method="topk" if topk else "sampled",
            rounds=0 if topk else config.rounds,
            temperature=1.0 if topk else config.temperature,
            k=config.k if topk else 0,
            top_p=config.top_p if topk else None,
            seq_len=seq_len,
            teacher=teacher,
            tokenizer_fingerprint=tokenizer_fingerprint,
            run=run,
        )

    def differences(self, other: ShardManifest, *, runs: bool = True) -> list[tuple[str, object, object]]:
        """``(field, mine, other's)`` for every field that differs (``run.<field>`` inside the runs).

        ``runs=False`` compares only what defines the targets (two shards of one run differ in
        their slices, not in that).
        """
        found = []
        for f in fields(self):
            if f.name == "run":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                found.append((f.name, mine, theirs))
        if runs and self.run != other.run:
            if self.run is None or other.run is None:
                found.append(("run", self.run, other.run))
            else:
                for f in fields(TeacherRun):
                    mine, theirs = getattr(self.run, f.name), getattr(other.run, f.name)
                    if mine != theirs:
                        found.append((f"run.{f.name}", mine, theirs))
        return found

    @staticmethod
    def describe(differences: list[tuple[str, object, object]], mine: str, theirs: str) -> str:
        """``"run.world_size: 2 (mine) vs 1 (theirs); ..."``: what :meth:`differences` found, for a message."""
        return "; ".join(f"{name}: {a!r} ({mine}) vs {b!r} ({theirs})" for name, a, b in differences)

    def check(self, header: RecordHeader, seq: int | None = None) -> None:
        """Raise :class:`ManifestMismatchError` if a record's header (or its seq) disagrees with the manifest."""
        if seq is not None and self.run is not None and not self.run.seq_start <= seq < self.run.seq_stop:
            raise ManifestMismatchError(
                "seq",
                f"the shard holds the teacher run's seqs [{self.run.seq_start}, {self.run.seq_stop}), not {seq}",
            )
        expected: list[tuple[str, object, object]] = [
            ("method", self.method, header.kind),
            ("vocab_size", self.vocab_size, header.vocab_size),
        ]
        if self.method == "sampled":
            expected += [
                ("rounds", self.rounds, header.rounds),
                ("temperature", _f32(self.temperature), _f32(header.temperature)),
            ]
        else:
            top_p = None if self.top_p is None or self.top_p >= 1 else _f32(self.top_p)
            got_top_p = None if header.top_p is None or header.top_p >= 1 else _f32(header.top_p)
            expected += [("k", self.k, header.k), ("top_p", top_p, got_top_p)]
        if self.seq_len:
            expected.append(("seq_len", self.seq_len, header.num_positions))
        for field, want, got in expected:
            if want != got:
                raise ManifestMismatchError(field, f"the shard's manifest says {want!r}, the record has {got!r}")

    @property
    def method_label(self) -> str:
        """The method and its parameters in a few characters: ``sampled N=50``, ``sampled N=50 t=0.8``,
        ``top-12``, ``top-12 p=0.9``."""
        if self.method == "sampled":
            return f"sampled N={self.rounds}" + ("" if self.temperature == 1.0 else f" t={self.temperature:g}")
        return f"top-{self.k}" + ("" if self.top_p is None else f" p={self.top_p:g}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardManifest:
        """A stored manifest: unknown keys (a newer writer's) are logged and ignored, bad values are ``ValueError``."""
        try:
            stored = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"expected a JSON object, got {exc}") from exc
        if not isinstance(stored, dict):
            raise ValueError(f"expected a JSON object, got {type(stored).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(stored) - known)
        if unknown:
            log.warning("manifest: ignoring unknown keys %s", ", ".join(unknown))
        try:
            return cls(**{name: value for name, value in stored.items() if name in known})
        except TypeError as exc:  # a required field missing, or a value of the wrong type
            raise ValueError(str(exc)) from exc


@dataclass(frozen=True)
class ShardInfo:
    """What a server knows about one of its shards (the server's answer and the client's view)."""

    shard: int
    manifest: ShardManifest | None  # None only for a damaged shard whose manifest cannot be read
    sealed: bool
    sequences: int  # records stored
    positions: int  # sum of the records' positions
    record_bytes: int  # sum of the records' sizes
    disk_bytes: int  # the shard's LMDB file on disk
    first_seq: int | None  # None while the shard is empty
    last_seq: int | None
    map_size: int  # current LMDB map size
    damage: str | None = None  # why the shard's files are damaged (None: intact)
    damaged_records: int = 0  # records that failed their checksum when read (an overwrite repairs one)

    @property
    def bytes_per_position(self) -> float:
        return round(self.record_bytes / self.positions, 3) if self.positions else 0.0

    def completeness(self, runs: Callable[[], Iterable[tuple[int, int]]], limit: int) -> dict[str, Any]:
        """``missing`` (count), ``gaps`` (its first ``limit`` ranges) and ``complete`` (sealed, none missing),
        from ``runs()``, the stored seqs as ascending ``[start, end)`` runs (:func:`missing_seqs`); all None
        for a damaged shard, whose seqs cannot be listed (``runs`` is not called)."""
        if self.damage is not None:
            return {"missing": None, "gaps": None, "complete": None}
        run = self.manifest.run if self.manifest is not None else None  # with it, the seqs that belong here
        missing, gaps = missing_seqs(runs(), run, limit)
        return {"missing": missing, "gaps": gaps, "complete": self.sealed and missing == 0}

    def to_dict(self) -> dict[str, Any]:
        """Every field (the manifest as a dict) and ``bytes_per_position``: what ``shards --json`` and REST show."""
        return {**asdict(self), "bytes_per_position": self.bytes_per_position}


def missing_seqs(
    runs: Iterable[tuple[int, int]], run: TeacherRun | None, limit: int
) -> tuple[int, list[tuple[int, int]]]:
    """``(count, first `limit` ranges)`` of the seqs a shard lacks, as ``[start, end)`` ranges in order.

    ``runs`` are the shard's stored seqs as ascending ``[start, end)`` runs. Without a teacher
    ``run`` only the holes between stored seqs count; with one, also what its slice
    ``[seq_start, seq_stop)`` holds beyond the stored seqs at either end.
    """
    count = 0
    ranges: list[tuple[int, int]] = []

    def lacks(start: int, end: int) -> None:
        nonlocal count
        if end > start:
            count += end - start
            if len(ranges) < limit:
                ranges.append((start, end))

    previous: int | None = None if run is None else run.seq_start
    for start, end in runs:
        if previous is not None:
            lacks(previous, start)
        previous = end
    if run is not None:
        lacks(run.seq_start if previous is None else previous, run.seq_stop)
    return count, ranges
