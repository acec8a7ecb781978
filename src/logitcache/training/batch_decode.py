"""A batch of packed records straight into the loader's padded tensors, in one compiled pass.

:func:`decode_batch` is what :class:`~logitcache.training.SparseKDLoader` runs for every batch on
the host. For each record it checks the header, the length and the checksum
(:func:`records.read_header <logitcache.core.records.read_header>`, C speed), then one numba
kernel walks the fixed-width sections of all the batch's records and writes each entry into its
slot of ``target_ids [B, T, K]`` / ``target_probs [B, T, K]`` (and the input ids, labels and mask),
checking the content as it goes exactly as :func:`records.decode
<logitcache.core.records.decode>` does: entry counts in ``1..N`` (or ``k``) summing to ``E``,
token ids ``< V``, sampled counts in ``1..N`` summing to ``N`` with ids strictly ascending, top-k
levels below ``2**value_bits`` with ids unique, weights finite and ``>= 0``; then the input-id
hash. No ragged intermediate arrays, no per-position Python.

When the kernel finds a record it refuses, that record goes through :func:`records.decode`,
which raises the precise :class:`~logitcache.core.records.RecordError` (so there is one set of
messages). Records in the DENSE layout (zstd) are decoded by :func:`records.decode` and placed
by the reference below: correct, and as slow as before.

:func:`pad_decoded` is the plain reference (``records.decode`` of each record, then padding in
numpy): the tests pin :func:`decode_batch` to it over every record kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from logitcache.core import records
from logitcache.targets.sparse import SparseTargets, to_device, unpack_entries
from logitcache.training import batch_kernels as _typed_kernels
from logitcache.training.batch_memory import BufferPool, SharedSlabPool

__all__ = ["decode_batch", "decode_batch_on", "pad_decoded"]

batch_kernels: Any = _typed_kernels  # numba's Dispatcher stubs do not know the kernels' arguments


def decode_batch(
    blobs: Sequence[bytes | memoryview],
    *,
    normalize: bool = True,
    ignore_index: int = -100,
    pin: bool = False,
    pool: BufferPool | SharedSlabPool | None = None,
) -> tuple[dict[str, Tensor], list[int]]:
    """``(tensors, input_hashes)`` for the records ``blobs`` (one row each, in order).

    ``tensors``: ``input_ids [B, T]`` int64 (0 past a record's end), ``labels [B, T]`` (the next
    input id, ``ignore_index`` at a record's last position and past it), ``attention_mask [B, T]``
    bool, ``target_ids [B, T, K]`` int64 (-1 in unused slots), ``target_probs [B, T, K]`` float32
    (0 in unused slots); ``T`` is the longest record, ``K`` the most entries at any position.
    ``normalize`` as in :meth:`Record.target_probs <logitcache.core.records.Record.target_probs>`.
    ``pin``: page-locked CPU tensors; else ``pool``: CPU tensors in memory of earlier batches no longer
    referred to (:mod:`.batch_memory`). Raises :class:`~logitcache.core.records.RecordError` for a
    damaged record.
    """
    headers = [records.read_header(blob) for blob in blobs]  # length, header fields and checksum
    b = len(blobs)
    fast = [row for row, h in enumerate(headers) if not h.dense]
    dense = {row: records.decode(blobs[row]) for row, h in enumerate(headers) if h.dense}
    table = np.zeros((b, batch_kernels.COLUMNS), dtype=np.int64)
    weights: list[np.ndarray] = []  # the WEIGHTED records' float32 weights, back to back
    at = weights_at = 0
    for row in fast:
        h = headers[row]
        ids_size, counts_size, entries_size, _ = h.section_sizes()
        table[row] = (
            at + records.HEADER_SIZE,
            h.num_positions,
            h.num_entries,
            h.input_id_bytes,
            h.count_bytes,
            h.entry_bytes,
            h.id_bits,
            h.value_bits,
            h.kind == "topk",
            h.rounds,
            h.max_entries_per_position,
            h.vocab_size,
            weights_at if h.weighted else -1,
        )
        if h.weighted:
            offset = records.HEADER_SIZE + ids_size + counts_size + entries_size
            weights.append(np.frombuffer(blobs[row], dtype="<f4", count=h.num_entries, offset=offset))
            weights_at += h.num_entries
        at += len(blobs[row])
    buffer = np.frombuffer(b"".join(blobs[row] for row in fast), dtype=np.uint8)
    lengths = [h.num_positions for h in headers]
    t = max(lengths)
    k = max(
        [batch_kernels.max_count(buffer, table[fast]) if fast else 1]
        + [int(np.diff(r.offsets).max()) for r in dense.values()]
    )
    tensors, arrays = _allocate(b, t, k, pin=pin, pool=pool)
    all_weights = np.concatenate(weights).astype(np.float32) if weights else np.zeros(0, dtype=np.float32)
    rows = np.array(fast, dtype=np.int64)
    bad = int(batch_kernels.decode_rows(buffer, all_weights, table, rows, *arrays, ignore_index, normalize))
    if bad >= 0:
        records.decode(blobs[bad])  # raises the record's error
        raise AssertionError(f"the batch decoder refused record {bad}, which records.decode accepts")
    for row, record in dense.items():
        _place(record, row, arrays, ignore_index, normalize)
    for row in fast:  # the alignment fingerprint
        records.check_input_hash(headers[row], arrays[0][row, : lengths[row]])
    return tensors, [h.input_hash for h in headers]


def decode_batch_on(
    blobs: Sequence[bytes | memoryview], device: torch.device | str, *, normalize: bool = True, ignore_index: int = -100
) -> tuple[dict[str, Tensor], list[int]]:
    """:func:`decode_batch`'s tensors on ``device``, the entries unpacked and padded there.

    The CPU checks each record's header and checksum and reads its small sections (input ids with
    the alignment hash, entry counts: :func:`records.decode_small_sections
    <logitcache.core.records.decode_small_sections>`), and builds the ``[B, T]`` tensors; the rest of
    the records goes to the device in one copy through pinned memory, where
    :func:`~logitcache.targets.sparse.unpack_entries` (what ``decode_torch`` runs) unpacks and checks
    each and scatters it into ``[B, T, K]``. One host sync per batch, for the checks; a refused
    record is decoded by :func:`records.decode`, which raises its precise error. Dense records are
    decoded on the host and copied.
    """
    target = torch.device(device)
    headers = [records.read_header(blob) for blob in blobs]
    b, t = len(blobs), max(h.num_positions for h in headers)
    small: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    dense: dict[int, records.Record] = {}
    refused = b  # the first row the host refuses (its later rows are not looked at)
    for row, (h, blob) in enumerate(zip(headers, blobs, strict=True)):
        try:
            if h.dense:
                dense[row] = records.decode(blob)
            else:
                small[row] = records.decode_small_sections(h, blob)
        except records.RecordError:
            refused = row
            break
    pin = target.type == "cuda"
    counts = [np.diff(offsets) for _, offsets in small.values()] + [np.diff(r.offsets) for r in dense.values()]
    k = max([int(c.max()) for c in counts if c.size] + [1])
    host, host_arrays = _allocate(b, t, 1, pin=pin)
    input_ids, labels, mask = host_arrays[:3]
    input_ids[:], labels[:], mask[:] = 0, ignore_index, False
    for row, ids in [(row, ids) for row, (ids, _) in small.items()] + [(row, r.input_ids) for row, r in dense.items()]:
        n = ids.shape[0]
        input_ids[row, :n], labels[row, : n - 1], mask[row, :n] = ids, ids[1:], True
    tensors = {name: _to(host[name], target) for name in ("input_ids", "labels", "attention_mask")}
    target_ids = torch.full((b, t, k), -1, dtype=torch.int64, device=target)
    target_probs = torch.zeros((b, t, k), dtype=torch.float32, device=target)
    flat_ids, flat_probs = target_ids.view(-1), target_probs.view(-1)
    rows = list(small)
    tails = [
        memoryview(blobs[row])[records.HEADER_SIZE + headers[row].num_positions * headers[row].input_id_bytes :]
        for row in rows
    ]
    packed = to_device(tails, target)
    offsets = _to(torch.from_numpy(np.concatenate([small[row][1] for row in rows] or [np.zeros(0, np.int64)])), target)
    flags: list[Tensor] = []
    at = starts = 0
    for row, tail in zip(rows, tails, strict=True):
        h = headers[row]
        targets, checks = unpack_entries(h, packed[at : at + len(tail)], offsets[starts : starts + h.num_positions + 1])
        at, starts = at + len(tail), starts + h.num_positions + 1
        position = targets.position_index()
        slot = torch.arange(h.num_entries, device=target) - targets.offsets[:-1][position]
        index = (row * t + position) * k + slot
        flat_ids[index] = targets.token_ids
        flat_probs[index] = targets.target_probs(normalize=normalize)
        flags.append(torch.stack([flag for flag, _ in checks]).any())
    for row, record in dense.items():
        padded_ids, padded_probs = SparseTargets.from_record(record, target).to_padded(width=k, normalize=normalize)
        n = record.header.num_positions
        target_ids[row, :n], target_probs[row, :n] = padded_ids, padded_probs
    bad = [row for row, flag in zip(rows, torch.stack(flags).tolist() if flags else [], strict=True) if flag]
    if bad or refused < b:
        first = min([*bad, refused])
        records.decode(blobs[first])  # raises the record's error
        raise AssertionError(f"the device decoder refused record {first}, which records.decode accepts")
    tensors |= {"target_ids": target_ids, "target_probs": target_probs}
    return tensors, [h.input_hash for h in headers]


def _to(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; to CUDA through pinned memory, asynchronously."""
    if device.type != "cuda":
        return tensor.to(device)
    return (tensor if tensor.is_pinned() else tensor.pin_memory()).to(device, non_blocking=True)


def pad_decoded(
    decoded: Sequence[records.Record], *, normalize: bool = True, ignore_index: int = -100, pin: bool = False
) -> dict[str, Tensor]:
    """The reference for :func:`decode_batch`: decoded records padded into the same tensors, in numpy."""
    b = len(decoded)
    lengths = np.array([r.header.num_positions for r in decoded], dtype=np.int64)
    t = int(lengths.max())
    k = max(int(np.diff(r.offsets).max()) for r in decoded)
    tensors, arrays = _allocate(b, t, k, pin=pin)
    for row, record in enumerate(decoded):
        _place(record, row, arrays, ignore_index, normalize)
    return tensors


def _place(record: records.Record, row: int, arrays: list[np.ndarray], ignore_index: int, normalize: bool) -> None:
    """Row ``row`` of the padded arrays from one decoded record (numpy)."""
    input_ids, labels, mask, target_ids, target_probs = arrays
    n = record.header.num_positions
    input_ids[row] = 0
    input_ids[row, :n] = record.input_ids
    labels[row] = ignore_index
    labels[row, : n - 1] = record.input_ids[1:]
    mask[row] = False
    mask[row, :n] = True
    counts = np.diff(record.offsets)
    filled = np.arange(target_ids.shape[2])[None, :] < counts[:, None]  # [n, K]: row-major = record order
    target_ids[row] = -1
    target_ids[row, :n][filled] = record.token_ids
    target_probs[row] = 0
    target_probs[row, :n][filled] = record.target_probs(normalize=normalize)


_LAYOUT = (  # the batch's tensors: name, dtype, whether [B, T, K] (else [B, T]); the 8-byte ones first
    ("input_ids", torch.int64, False),
    ("labels", torch.int64, False),
    ("target_ids", torch.int64, True),
    ("target_probs", torch.float32, True),
    ("attention_mask", torch.bool, False),
)


def _allocate(
    b: int, t: int, k: int, *, pin: bool, pool: BufferPool | SharedSlabPool | None = None
) -> tuple[dict[str, Tensor], list[np.ndarray]]:
    """The batch's tensors (uninitialised) and their numpy views: input ids, labels, mask, target ids, probs."""
    shapes = {name: ((b, t, k) if wide else (b, t), dtype) for name, dtype, wide in _LAYOUT}
    if pool is not None and not pin:  # views of one slab, 8-byte aligned (the 8-byte tensors first)
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values()]
        slab, at = pool.take(sum(sizes)), 0
        tensors = {}
        for (name, (shape, dtype)), size in zip(shapes.items(), sizes, strict=True):
            view = slab[at : at + size].view(str(dtype).removeprefix("torch.")).reshape(shape)
            tensors[name], at = torch.from_numpy(view), at + size
    else:
        tensors = {name: torch.empty(shape, dtype=dtype, pin_memory=pin) for name, (shape, dtype) in shapes.items()}
    order = ("input_ids", "labels", "attention_mask", "target_ids", "target_probs")
    return tensors, [tensors[name].numpy() for name in order]
