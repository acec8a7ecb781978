"""Sparse targets as torch tensors: :class:`SparseTargets`, and records decoded into them.

The record codec itself is numpy (:mod:`logitcache.core.records`); this is its torch side:
:meth:`SparseTargets.from_record` turns a decoded record into tensors, and :func:`decode_torch`
ships a record's packed bytes to a device and unpacks and validates them there with torch ops.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from logitcache.core import records
from logitcache.core.config import TargetKind
from logitcache.core.records import (
    HEADER_SIZE,
    CountSumError,
    EntryOrderError,
    HeaderFieldError,
    Record,
    RecordError,
    RecordHeader,
    TokenIdError,
    WeightError,
    decode,
    read_header,
)

__all__ = ["SparseTargets", "decode_torch", "to_device", "unpack_entries"]


@dataclass(frozen=True)
class SparseTargets:
    """Sparse targets for ``P`` positions, stored ragged.

    Position ``p`` owns entries ``offsets[p]:offsets[p + 1]`` of ``token_ids`` / ``values``.
    Every position has at least one entry. Within a position, sampled entries are in ascending
    token id order (ids unique); top-k entries are in decreasing probability order.

    ``values`` depends on ``kind``:

    * ``"sampled"``: int64 counts, each in ``[1, rounds]``, summing to ``rounds`` per position;
      ``weights`` holds the importance weights ``p/q`` (float32) when ``temperature != 1``.
    * ``"topk"``: float32 teacher probabilities (not renormalised: ``1 - Σ`` is the residual).
    """

    kind: TargetKind
    vocab_size: int
    token_ids: Tensor  # [E] int64
    values: Tensor  # [E] int64 counts (sampled) | float32 probabilities (topk)
    offsets: Tensor  # [P + 1] int64, offsets[0] = 0, offsets[-1] = E
    weights: Tensor | None = None  # [E] float32 p/q, sampled with temperature != 1 only
    rounds: int = 0  # N (sampled); 0 for top-k
    k: int = 0  # k (top-k); 0 for sampled
    temperature: float = 1.0  # proposal temperature (sampled)
    top_p: float | None = None  # top-p truncation (top-k)

    @property
    def num_positions(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def num_entries(self) -> int:
        return int(self.token_ids.numel())

    @property
    def device(self) -> torch.device:
        return self.token_ids.device

    def entry_counts(self) -> Tensor:
        """Entries per position. ``[P]`` int64."""
        return self.offsets[1:] - self.offsets[:-1]

    def position_index(self) -> Tensor:
        """The position each entry belongs to. ``[E]`` int64."""
        counts = self.entry_counts()
        return torch.repeat_interleave(
            torch.arange(self.num_positions, device=self.device), counts, output_size=self.num_entries
        )

    def target_probs(self, *, normalize: bool = True) -> Tensor:
        """The target probability of every entry. ``[E]`` float32.

        Sampled: ``count·w / Σ count·w`` per position (``w = p/q``, 1 when ``t = 1``), the paper's
        target. With ``normalize=False`` and ``t != 1`` it is ``count·w / N`` instead: exactly
        unbiased, but it sums to 1 only in expectation. Top-k: the stored probabilities.
        """
        if self.kind == "topk":
            return self.values.float()
        mass = self.values.float()
        if self.weights is None:
            return mass / self.rounds
        mass = mass * self.weights
        if not normalize:
            return mass / self.rounds
        totals = torch.zeros(self.num_positions, device=self.device, dtype=mass.dtype)
        totals.index_add_(0, self.position_index(), mass)
        return mass / totals.repeat_interleave(self.entry_counts(), output_size=self.num_entries)

    def residual_mass(self) -> Tensor:
        """``1 - Σ target`` per position, clamped at 0. ``[P]`` float32 (exactly zero when sampled)."""
        if self.kind == "sampled":
            return torch.zeros(self.num_positions, device=self.device)
        totals = torch.zeros(self.num_positions, device=self.device)
        totals.index_add_(0, self.position_index(), self.target_probs())
        return (1.0 - totals).clamp_min(0.0)

    def to_padded(self, width: int | None = None, pad_id: int = -1, *, normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Padded ``(ids [P, K], probs [P, K])``; padding is ``pad_id`` / 0; ``probs`` as
        :meth:`target_probs` (``normalize``) gives them.

        ``K`` is ``width`` or the largest entry count; a ``width`` smaller than that raises.
        """
        counts = self.entry_counts()
        most = int(counts.max()) if self.num_positions else 0
        width = most if width is None else width
        if width < most:
            raise ValueError(f"width: expected >= {most} (the most entries at a position), got {width}")
        ids = torch.full((self.num_positions, width), pad_id, dtype=torch.int64, device=self.device)
        probs = torch.zeros((self.num_positions, width), dtype=torch.float32, device=self.device)
        rows = self.position_index()
        cols = torch.arange(self.num_entries, device=self.device) - self.offsets[:-1][rows]
        ids[rows, cols] = self.token_ids
        probs[rows, cols] = self.target_probs(normalize=normalize)
        return ids, probs

    def to_dense(self) -> Tensor:
        """Dense ``[P, V]`` float32 target (for tests and small vocabularies only)."""
        dense = torch.zeros((self.num_positions, self.vocab_size), device=self.device)
        dense[self.position_index(), self.token_ids] = self.target_probs()
        return dense

    def apply(self, fn: Callable[[Tensor], Tensor]) -> SparseTargets:
        """The same targets with ``fn`` applied to every tensor (a copy to a device, to pinned memory...)."""
        return dataclasses.replace(
            self,
            token_ids=fn(self.token_ids),
            values=fn(self.values),
            offsets=fn(self.offsets),
            weights=None if self.weights is None else fn(self.weights),
        )

    def positions(self, start: int, end: int) -> SparseTargets:
        """Positions ``[start, end)`` as targets of their own (views of these tensors; offsets rebased)."""
        lo, hi = int(self.offsets[start]), int(self.offsets[end])
        return dataclasses.replace(
            self,
            token_ids=self.token_ids[lo:hi],
            values=self.values[lo:hi],
            offsets=self.offsets[start : end + 1] - lo,
            weights=None if self.weights is None else self.weights[lo:hi],
        )

    @classmethod
    def cat(cls, parts: Sequence[SparseTargets]) -> SparseTargets:
        """The positions of ``parts`` (same kind and parameters) one after another."""
        if not parts:
            raise ValueError("parts: expected at least one SparseTargets")
        first = parts[0]
        shifts = [0, *itertools.accumulate(p.num_entries for p in parts[:-1])]
        offsets = torch.cat(
            [first.offsets[:1], *(p.offsets[1:] + shift for p, shift in zip(parts, shifts, strict=True))]
        )
        return dataclasses.replace(
            first,
            token_ids=torch.cat([p.token_ids for p in parts]),
            values=torch.cat([p.values for p in parts]),
            offsets=offsets,
            weights=None if first.weights is None else torch.cat([p.weights for p in parts]),  # type: ignore[misc]
        )

    def to(self, device: torch.device | str) -> SparseTargets:
        """The same targets with every tensor on ``device``."""
        return self.apply(lambda t: t.to(device))

    @classmethod
    def from_arrays(
        cls,
        header: RecordHeader,
        token_ids: Tensor,
        values: Tensor,
        offsets: Tensor,
        weights: Tensor | None,
    ) -> SparseTargets:
        """Targets with a record's parameters (kind, V, N or k, temperature, top-p) and these tensors."""
        return cls(
            kind=header.kind,
            vocab_size=header.vocab_size,
            token_ids=token_ids,
            values=values,
            offsets=offsets,
            weights=weights,
            rounds=header.rounds,
            k=header.k,
            temperature=header.temperature,
            top_p=header.top_p,
        )

    @classmethod
    def from_record(cls, record: Record, device: torch.device | str | None = None) -> SparseTargets:
        """A decoded record's targets as tensors on ``device`` (CPU by default)."""
        return cls.from_arrays(
            record.header,
            torch.from_numpy(record.token_ids).to(device),
            torch.from_numpy(record.values).to(device),
            torch.from_numpy(record.offsets).to(device),
            None if record.weights is None else torch.from_numpy(record.weights).to(device),
        )


def decode_torch(
    data: bytes | bytearray | memoryview, device: torch.device | str | None = None
) -> tuple[Tensor, SparseTargets]:
    """Decode a record into ``(input_ids [T] int64, SparseTargets)`` on ``device``.

    The CPU checks the header and checksum and reads the small sections (input ids, with the
    alignment hash, and the entry counts: :func:`~logitcache.core.records.decode_small_sections`);
    the entries (and weights) go to the device as packed bytes, through pinned memory, and are
    unpacked and checked there with torch ops (:func:`unpack_entries`): one host sync whatever the
    size. A dense body is decompressed on the CPU first. The loader's device decode
    (:func:`~logitcache.training.batch_decode.decode_batch_on`) does the same for a whole batch.
    """
    h = read_header(data)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if h.dense:
        record = decode(data)
        return torch.from_numpy(record.input_ids).to(target), SparseTargets.from_record(record, target)
    input_ids, offsets = records.decode_small_sections(h, data)
    tail = to_device([memoryview(data)[HEADER_SIZE + h.num_positions * h.input_id_bytes :]], target)
    targets, checks = unpack_entries(h, tail, torch.from_numpy(offsets).to(target))
    failed = torch.stack([flag for flag, _ in checks]).tolist()
    for flag, (_, error) in zip(failed, checks, strict=True):
        if flag:
            raise error
    return torch.from_numpy(input_ids).to(target), targets


def to_device(parts: Sequence[bytes | bytearray | memoryview], device: torch.device) -> Tensor:
    """Packed bytes, back to back, as a uint8 tensor on ``device``: copied once into a host buffer
    (pinned for CUDA, whose copy to the device is then asynchronous)."""
    sizes = [len(part) for part in parts]
    host = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=device.type == "cuda")
    view, at = host.numpy(), 0
    for part, size in zip(parts, sizes, strict=True):
        view[at : at + size] = np.frombuffer(part, dtype=np.uint8)
        at += size
    return host.to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def unpack_entries(
    h: RecordHeader, tail: Tensor, offsets: Tensor
) -> tuple[SparseTargets, list[tuple[Tensor, RecordError]]]:
    """A fixed-width record's targets from ``tail`` (its body past the input ids: counts, entries,
    weights, as packed bytes on the device) and its host-checked ``offsets`` (on the device), with
    the content checks :func:`~logitcache.core.records.decode` makes as device flags, each beside the
    error it stands for. Nothing here waits for the device: the caller reads the flags once."""
    _, counts_size, entries_size, _ = h.section_sizes()
    e = h.num_entries
    entries = _unpack_le_torch(tail[counts_size : counts_size + entries_size], e, h.entry_bytes)
    token_ids = entries & ((1 << h.id_bits) - 1)
    values = entries >> h.id_bits
    weights = None
    if h.weighted:  # clone: 4-byte aligned
        weights = tail[counts_size + entries_size : counts_size + entries_size + 4 * e].clone().view(torch.float32)
    counts = offsets[1:] - offsets[:-1]
    position = torch.repeat_interleave(torch.arange(h.num_positions, device=tail.device), counts, output_size=e)
    checks: list[tuple[Tensor, RecordError]] = [
        ((token_ids >= h.vocab_size).any(), TokenIdError("entries", f"expected ids < vocab_size {h.vocab_size}")),
    ]
    probs_or_counts = values
    if h.kind == "sampled":
        sums = torch.zeros(h.num_positions, dtype=torch.int64, device=tail.device).index_add_(0, position, values)
        ascending = (position[1:] != position[:-1]) | (token_ids[1:] > token_ids[:-1])
        checks += [
            (((values < 1) | (values > h.rounds)).any(), CountSumError("entries", f"expected counts in 1..{h.rounds}")),
            ((sums != h.rounds).any(), CountSumError("entries", f"expected counts summing to N = {h.rounds}")),
            ((~ascending).any(), EntryOrderError("entries", "expected strictly ascending ids within a position")),
        ]
        if weights is not None:
            bad_weight = (~torch.isfinite(weights) | (weights < 0)).any()
            checks.append((bad_weight, WeightError("weights", "expected finite importance weights >= 0")))
    else:
        too_big = (values >= 1 << h.value_bits).any()
        checks.append((too_big, HeaderFieldError("entries", f"expected top-k levels below {1 << h.value_bits}")))
        keyed = (position * h.vocab_size + token_ids).sort().values
        checks.append(
            ((keyed[1:] == keyed[:-1]).any(), EntryOrderError("entries", "expected unique token ids within a position"))
        )
        log_ratio = torch.log((values + 1).double()) - h.value_bits * math.log(2.0)
        running = torch.cumsum(log_ratio, dim=0)
        base = torch.cat([running.new_zeros(1), running])[offsets[:-1]]
        probs_or_counts = torch.exp(running - base.repeat_interleave(counts, output_size=e)).float()
    return SparseTargets.from_arrays(h, token_ids, probs_or_counts, offsets, weights), checks


def _unpack_le_torch(raw: Tensor, count: int, width: int) -> Tensor:
    cols = raw.view(count, width).to(torch.int64)
    out = cols[:, 0].clone()
    for j in range(1, width):
        out |= cols[:, j] << (8 * j)
    return out
