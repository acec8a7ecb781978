"""The training-side loader: cached sparse targets as padded torch batches, rank-aware and resumable.

::

    client = CacheClient(["cache-0:50051", "cache-1:50051"])
    loader = SparseKDLoader(client, shards=[0, 1, 2, 3], batch_size=8, seed=0, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            logits = student(batch.input_ids).logits                       # [B, T, V]
            loss = sparse_kd_loss(logits.flatten(0, 1), batch.target_ids.flatten(0, 1),
                                  batch.target_probs.flatten(0, 1), labels=batch.labels.flatten())

**Order.** At construction the loader lists every seq of ``shards`` once and numbers the
``(shard, seq)`` pairs, shard by shard in the order given, seqs ascending. Epoch ``e`` visits them in
a permutation that is a function of ``(seed, e)`` only (``shuffle=False``: in that numbering).

**Partition.** Global step ``i`` takes the next ``world_size · batch_size`` items of the order;
rank ``r`` gets the ``r``-th run of ``batch_size`` of them. The tail that does not fill a global step is
dropped with ``drop_last`` (every rank then yields the same number of full batches, as DDP needs);
otherwise it is split evenly across ranks (each rank's last batch may be smaller, and ranks may
differ by one batch). Under a ``DataLoader`` with workers (``batch_size=None``), worker ``w`` of
``W`` builds the rank's batches ``w, w + W, ...``, so the DataLoader's round-robin yields them in
order. Every ``(shard, seq)`` is yielded exactly once per epoch across all ranks and workers.

**Resume.** ``state_dict()`` is a few integers and a fingerprint of the seed, the shard set and
the seqs: ``load_state_dict`` makes the next iteration start at the first batch not yet consumed
and refuses (:class:`LoaderStateError`) a state from a different seed, shard set, batch size,
world size or ordering. With DataLoader workers the loader object in the main process does not see
what was consumed: pass ``state_dict(batches_done=batch.batch_index + 1)``. Nor do ``set_epoch`` and
``load_state_dict`` reach the copies in ``persistent_workers=True`` workers: keep them off.

**Safety.** At construction the loader reads every shard's manifest and refuses
(:class:`ShardSetError`) shards whose manifests disagree on what the targets are (vocabulary,
method and parameters, sequence length, teacher, tokenizer; ``allow_mixed=True`` permits it),
unsealed shards (still being written: ``allow_unsealed=True`` permits it, with a warning), and a
seq stored in two shards of the same corpus (trained on twice: ``allow_duplicates=True``).
``loader.manifest`` and ``loader.vocab_size`` say what the targets are;
:meth:`~SparseKDLoader.check_student` refuses a student whose vocabulary is smaller than the
teacher's or whose tokenizer differs. A larger student vocabulary (the teacher's padded to a
multiple of 64 or 128) is fine: the extra ids get zero target mass.

**Targets.** ``target_probs`` are the normalised targets by default; ``normalize=False`` hands out
the exactly unbiased ones of a tempered proposal (pass ``KDParams(normalized_targets=False)`` to the
loss); :mod:`logitcache.kd.loss` says what each costs. At temperature 1 the two are the same.

**Prefetch.** Two background threads overlap the work: one receives the records of the next
``read_ahead`` batches over gRPC (one ``Read`` per shard; the records stay views into the received
messages, never copied into ``bytes``), the other decodes a batch at a time straight into the padded
tensors (:func:`~logitcache.training.batch_decode.decode_batch`, compiled, the GIL released) and,
with ``device``, copies them to the device on a side stream; up to ``prefetch`` batches wait ready.
Host batches reuse the memory of batches the caller has dropped (:mod:`.batch_memory`: fresh pages
cost as much as decoding); CUDA ones are decoded into pinned memory. In a DataLoader worker the
batches are built in shared-memory slabs that travel to the main process as handles and return to
the worker when the main process drops them, so nothing is copied on the way. With
``device_decode=True`` the records' packed bytes go to ``device`` instead and are unpacked and
padded there (:func:`~logitcache.training.batch_decode.decode_batch_on`: ``decode_torch``'s unpacking
for a whole batch, also on the side stream): less host CPU and fewer bytes over PCIe (3 bytes an
entry instead of 12), one copy and one device sync per batch. It is off by default until
``benchmarks/bench_loader.py``'s CUDA figures show it faster; DataLoader workers always decode on
the host. An exception in either thread is raised in the training loop.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import xxhash
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from logitcache.client.grpc_client import CacheClient
from logitcache.core import records
from logitcache.core.manifest import ShardInfo, ShardManifest
from logitcache.training.batch_decode import decode_batch, decode_batch_on
from logitcache.training.batch_memory import BufferPool, SharedSlabPool, rebuild_from_slab

__all__ = [
    "AlignmentError",
    "LoaderStateError",
    "ShardSetError",
    "SparseKDBatch",
    "SparseKDLoader",
    "plan_batches",
    "verify_alignment",
    "worker_share",
]

_STATE_VERSION = 1
_POLL = 0.05


class LoaderStateError(ValueError):
    """A loader state that does not belong to this loader (different seed, shards, ...)."""


class ShardSetError(ValueError):
    """The shards cannot be trained on as they are: mixed manifests, unsealed, seqs stored twice, or a
    student that does not fit their vocabulary or tokenizer. The message names the shards and the opt-in."""


class AlignmentError(ValueError):
    """The caller's token ids are not the ones the cached targets were computed on."""


@dataclass
class SparseKDBatch:
    """One batch, padded. Targets at position ``t`` are the teacher's distribution for token ``t + 1``.

    Dict-like as well, for loops and trainers written against dict batches: ``batch["labels"]``,
    ``"labels" in batch``, ``f(**batch)``, :meth:`to_dict`. (Not a ``collections.abc.Mapping``: a
    ``DataLoader`` would turn one into a plain dict.)
    """

    input_ids: Tensor  # [B, T] int64
    labels: Tensor  # [B, T] int64: input_ids shifted left, ignore_index at the end and at padding
    target_ids: Tensor  # [B, T, K] int64, -1 = padding (K = the batch's widest position)
    target_probs: Tensor  # [B, T, K] float32, 0 at padding
    attention_mask: Tensor  # [B, T] bool: False where a shorter record was padded
    shards: Tensor  # [B] int64
    seqs: Tensor  # [B] int64 (seq ids below 2**63)
    input_hashes: list[int]  # the records' xxh64 of their input ids (see verify_alignment)
    epoch: int
    batch_index: int  # this rank's batch number within the epoch

    def keys(self) -> tuple[str, ...]:
        return _BATCH_FIELDS

    def __getitem__(self, key: str) -> Any:
        if key not in _BATCH_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in _BATCH_FIELDS

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (the tensors are not copied)."""
        return {name: getattr(self, name) for name in _BATCH_FIELDS}

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}

    def _replace(self, tensors: dict[str, Tensor]) -> SparseKDBatch:
        return SparseKDBatch(**{**self.to_dict(), **tensors})

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> SparseKDBatch:
        return self._replace({name: t.to(device, non_blocking=non_blocking) for name, t in self._tensors().items()})

    def pin_memory(self) -> SparseKDBatch:
        """For ``DataLoader(pin_memory=True)``."""
        return self._replace({name: t.pin_memory() for name, t in self._tensors().items()})

    def __reduce__(self) -> tuple[Any, ...]:
        """A batch a DataLoader worker built in a shared slab (:mod:`.batch_memory`) pickles as the
        slab's handle and its tensors' offsets: no copy, and the worker reuses the slab once the
        receiving process drops the batch. Any other batch pickles its fields."""
        fields = self.to_dict()
        slab = self.__dict__.get("_slab")
        if slab is None:
            return (_batch_from_fields, (fields,))
        storage, layout = slab
        rest = {name: value for name, value in fields.items() if name not in layout}
        return (_batch_from_slab, (storage, layout, rest))

    @property
    def num_positions(self) -> int:
        return int(self.attention_mask.sum())


_BATCH_FIELDS = tuple(f.name for f in fields(SparseKDBatch))


def _batch_from_fields(values: dict[str, Any]) -> SparseKDBatch:
    return SparseKDBatch(**values)


def _batch_from_slab(slab: Tensor, layout: dict[str, Any], rest: dict[str, Any]) -> SparseKDBatch:
    values: dict[str, Any] = {**rest, **rebuild_from_slab(slab, layout)}
    return SparseKDBatch(**values)


def _rank_slices(
    num_items: int, *, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> list[tuple[int, int]]:
    """Rank ``rank``'s batches as ``[start, stop)`` slices of an epoch's order (the partition alone)."""
    if num_items < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"expected num_items >= 0, batch_size >= 1, 0 <= rank < world_size; "
            f"got {num_items}, {batch_size}, {rank}, {world_size}"
        )
    step = world_size * batch_size
    full = num_items // step
    slices = [(i * step + rank * batch_size, i * step + (rank + 1) * batch_size) for i in range(full)]
    tail = num_items - full * step
    if tail and not drop_last:
        # split the tail into world_size nearly equal runs (each at most batch_size long)
        lo, hi = (full * step + (tail * r) // world_size for r in (rank, rank + 1))
        if hi > lo:
            slices.append((lo, hi))
    return slices


def plan_batches(
    num_items: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[npt.NDArray[np.int64]]:
    """Rank ``rank``'s batches of epoch ``epoch``: arrays of indices into the item numbering."""
    slices = _rank_slices(num_items, batch_size=batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
    if shuffle:
        order = np.random.default_rng([seed & (2**64 - 1), epoch]).permutation(num_items)
    else:
        order = np.arange(num_items)
    return [order[lo:hi].astype(np.int64, copy=False) for lo, hi in slices]


def worker_share(num_batches: int, start: int, worker: int = 0, num_workers: int = 1) -> range:
    """The batch numbers DataLoader worker ``worker`` of ``num_workers`` builds, from batch ``start`` on.

    Worker ``w`` takes ``start + w, start + w + W, ...``: the DataLoader's round-robin over workers
    then yields the batches in order.
    """
    return range(start + worker, num_batches, num_workers)


def default_rank() -> tuple[int, int]:
    """``(rank, world_size)``: ``torch.distributed``'s when initialised, else ``RANK`` / ``WORLD_SIZE``
    (torchrun), else one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class SparseKDLoader(IterableDataset[SparseKDBatch]):
    """Batches of cached sparse targets for one rank (see the module docstring).

    ``rank`` / ``world_size`` default to ``torch.distributed`` when it is initialised, else to the
    ``RANK`` / ``WORLD_SIZE`` variables ``torchrun`` sets, else to a single process.
    """

    def __init__(
        self,
        client: CacheClient,
        shards: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        prefetch: int = 4,
        read_ahead: int = 8,
        device: torch.device | str | None = None,
        pin_memory: bool | None = None,
        ignore_index: int = -100,
        normalize: bool = True,
        device_decode: bool = False,
        allow_mixed: bool = False,
        allow_unsealed: bool = False,
        allow_duplicates: bool = False,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            rank_now, world_now = default_rank()
            rank = rank_now if rank is None else rank
            world_size = world_now if world_size is None else world_size
        if not shards or len(set(shards)) != len(shards):
            raise ValueError(f"shards: expected distinct shard ids, got {list(shards)}")
        if batch_size < 1 or prefetch < 1 or read_ahead < 1:
            raise ValueError(
                f"batch_size, prefetch, read_ahead: expected >= 1, got {batch_size}, {prefetch}, {read_ahead}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if device_decode and device is None:
            raise ValueError("device_decode: expected a device to decode on, got device=None")
        self.client = client
        self.shards = [int(s) for s in shards]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.read_ahead = read_ahead
        self.device = None if device is None else torch.device(device)
        self.pin_memory = self.device is not None and self.device.type == "cuda" if pin_memory is None else pin_memory
        self.ignore_index = ignore_index
        self.normalize = normalize
        self.device_decode = device_decode
        infos = {shard: client.get_shard(shard) for shard in self.shards}
        self.manifests: dict[int, ShardManifest] = _checked_manifests(infos, allow_mixed, allow_unsealed)
        first = self.manifests[self.shards[0]]
        mixed = any(m.differences(first, runs=False) for m in self.manifests.values())
        # what the targets are (None when mixing was allowed and they differ); the run's slice is per shard
        self.manifest: ShardManifest | None = None if mixed else dataclasses.replace(first, run=None)
        self.vocab_size = max(m.vocab_size for m in self.manifests.values())
        digest = xxhash.xxh64()
        parts_shard, parts_seq = [], []
        for shard in self.shards:
            seqs = client.list_seqs(shard)
            digest.update(np.array([shard, seqs.size], dtype=np.uint64).tobytes())
            digest.update(seqs.tobytes())
            parts_shard.append(np.full(seqs.size, shard, dtype=np.int64))
            parts_seq.append(seqs)
        self._item_shard = np.concatenate(parts_shard)
        self._item_seq = np.concatenate(parts_seq)
        if not allow_duplicates:
            _refuse_duplicates(self.manifests, dict(zip(self.shards, parts_seq, strict=True)))
        self.fingerprint = digest.hexdigest()
        self._start = 0  # first batch of the next iteration (set by load_state_dict)
        self._batches_done = 0

    def check_student(self, *, vocab_size: int | None = None, tokenizer: Any | None = None) -> None:
        """Raise :class:`ShardSetError` unless a student with this output size and tokenizer fits the targets.

        ``vocab_size`` (the student's logits' width) may exceed the teacher's (padding: those ids
        get zero target mass), never fall short of it. ``tokenizer`` must have the fingerprint the
        manifests record (shards without one are not checked).
        """
        if vocab_size is not None and vocab_size < self.vocab_size:
            raise ShardSetError(
                f"vocab_size: the student's vocabulary ({vocab_size}) is smaller than the teacher's "
                f"({self.vocab_size}) that the cached target ids index"
            )
        if tokenizer is not None:
            from logitcache.core.tokenizers import tokenizer_fingerprint

            mine = tokenizer_fingerprint(tokenizer)
            for shard, manifest in self.manifests.items():
                if manifest.tokenizer_fingerprint and manifest.tokenizer_fingerprint != mine:
                    raise ShardSetError(
                        f"tokenizer_fingerprint: shard {shard} was cached with tokenizer "
                        f"{manifest.tokenizer_fingerprint}, the student's is {mine}"
                    )

    # ----------------------------------------------------------------- order and state

    @property
    def num_items(self) -> int:
        """``(shard, seq)`` pairs over all ranks."""
        return int(self._item_seq.size)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order for the next iteration.

        A new epoch starts at its first batch; the current one keeps its resume point, so
        ``load_state_dict(state)`` followed by the usual ``set_epoch(state["epoch"])`` resumes.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = self._batches_done = 0

    def _plan(self) -> list[npt.NDArray[np.int64]]:
        return plan_batches(
            self.num_items,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
        )

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same in every epoch; no permutation is drawn)."""
        return len(
            _rank_slices(
                self.num_items,
                batch_size=self.batch_size,
                rank=self.rank,
                world_size=self.world_size,
                drop_last=self.drop_last,
            )
        )

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "batches_done": self._batches_done if batches_done is None else batches_done,
            "fingerprint": self.fingerprint,
            "shards": list(self.shards),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration starts at its first unconsumed batch."""
        mine = self.state_dict()
        if state.get("version") != _STATE_VERSION:
            raise LoaderStateError(f"version: expected {_STATE_VERSION}, got {state.get('version')!r}")
        for key in ("seed", "shards", "fingerprint", "batch_size", "world_size", "shuffle", "drop_last"):
            if state.get(key) != mine[key]:
                what = "the shards' seqs changed since" if key == "fingerprint" else f"{key} differs from"
                raise LoaderStateError(
                    f"{key}: {what} the saved state (saved {state.get(key)!r}, this loader has {mine[key]!r})"
                )
        epoch, done = state.get("epoch"), state.get("batches_done")
        if not isinstance(epoch, int) or epoch < 0:
            raise LoaderStateError(f"epoch: expected an integer >= 0, got {epoch!r}")
        if not isinstance(done, int) or not 0 <= done <= len(self):  # len does not depend on the epoch
            raise LoaderStateError(f"batches_done: expected an integer in [0, {len(self)}], got {done!r}")
        self.epoch = epoch
        self._start = self._batches_done = done

    # ----------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[SparseKDBatch]:
        info = get_worker_info()
        plan = self._plan()
        start = self._batches_done = self._start
        if info is None:
            mine = worker_share(len(plan), start)
            device = self.device
        else:  # a DataLoader worker: CPU tensors (the DataLoader pins them)
            mine = worker_share(len(plan), start, info.id, info.num_workers)
            device = None
        jobs = [(index, plan[index]) for index in mine]
        producer = _Background(
            lambda: self._produce(jobs, device, pin=self.pin_memory and info is None, shared=info is not None),
            depth=self.prefetch,
            name="logitcache-prefetch",
        )
        try:
            for batch, event in producer:
                if event is not None:  # the side-stream copies finish before the caller's stream uses them
                    current = torch.cuda.current_stream(device)
                    current.wait_event(event)
                    for tensor in batch._tensors().values():
                        tensor.record_stream(current)
                if info is None:
                    self._batches_done = batch.batch_index + 1
                yield batch
            if info is None:  # the epoch is done: a new iteration repeats it unless set_epoch says otherwise
                self._start, self._batches_done = 0, len(plan)
        finally:
            producer.stop()

    def _produce(
        self, jobs: list[tuple[int, npt.NDArray[np.int64]]], device: torch.device | None, *, pin: bool, shared: bool
    ) -> Iterator[tuple[SparseKDBatch, torch.cuda.Event | None]]:
        """The prefetch thread's work: ``(batch, event)`` for ``jobs`` in order, on ``device``; on CUDA
        every copy (and a device-side decode) is queued on a side stream and ``event`` marks its end."""
        side_stream = torch.cuda.Stream(device) if device is not None and device.type == "cuda" else None
        decode_on = device if self.device_decode else None
        with torch.cuda.stream(side_stream) if side_stream is not None else nullcontext():
            for batch in self._read_batches(jobs, decode_on, pin=pin, shared=shared):
                event = None
                if side_stream is not None:
                    batch = batch.to(device, non_blocking=True)  # type: ignore[arg-type]
                    event = torch.cuda.Event()
                    event.record()
                elif device is not None:
                    batch = batch.to(device)
                yield batch, event

    def _read_batches(
        self,
        jobs: list[tuple[int, npt.NDArray[np.int64]]],
        decode_on: torch.device | None = None,
        *,
        pin: bool = False,
        shared: bool = False,
    ) -> Iterator[SparseKDBatch]:
        """Batches for ``jobs`` in order, decoded on the host (or on ``decode_on``)
        while a receiving thread already reads the next ``read_ahead`` batches' records."""
        groups = [jobs[at : at + self.read_ahead] for at in range(0, len(jobs), self.read_ahead)]
        # host memory of batches the caller has dropped, reused: up to `prefetch` queued, one being built,
        # a couple held; a worker's also waits in the DataLoader's queue and its pinning thread
        pool: BufferPool | SharedSlabPool | None = None
        if shared:
            pool = SharedSlabPool(self.prefetch + 8)
        elif not pin:
            pool = BufferPool(self.prefetch + 3)
        receiver = _Background(lambda: map(self._receive, groups), depth=1, name="logitcache-receive")
        try:
            for group, data in receiver:
                for index, items in group:
                    keys = [(int(self._item_shard[i]), int(self._item_seq[i])) for i in items]
                    blobs = [data[k] for k in keys]
                    if decode_on is None:
                        yield self._assemble(index, keys, blobs, pin=pin, pool=pool)
                    else:
                        yield self._assemble_on(decode_on, index, keys, blobs)
        finally:
            receiver.stop()

    def _receive(
        self, group: list[tuple[int, npt.NDArray[np.int64]]]
    ) -> tuple[list[tuple[int, npt.NDArray[np.int64]]], dict[tuple[int, int], memoryview]]:
        """The records of ``group``'s batches: one ``Read`` per shard, views into the received messages."""
        wanted = np.concatenate([items for _, items in group])
        data: dict[tuple[int, int], memoryview] = {}
        for shard in np.unique(self._item_shard[wanted]):
            seqs = self._item_seq[wanted[self._item_shard[wanted] == shard]]
            for seq, record in self.client.read_views(int(shard), seqs=seqs.tolist()):
                data[(int(shard), seq)] = record
        return group, data

    def _batch(
        self, index: int, keys: list[tuple[int, int]], hashes: list[int], tensors: dict[str, Tensor]
    ) -> SparseKDBatch:
        return SparseKDBatch(
            **tensors,
            shards=torch.tensor([s for s, _ in keys], dtype=torch.int64),
            seqs=torch.tensor([q if q < 2**63 else -1 for _, q in keys], dtype=torch.int64),
            input_hashes=hashes,
            epoch=self.epoch,
            batch_index=index,
        )

    def _assemble_on(
        self, device: torch.device, index: int, keys: list[tuple[int, int]], blobs: list[memoryview]
    ) -> SparseKDBatch:
        """:meth:`_assemble` with the records' packed bytes shipped to ``device`` and unpacked there."""
        tensors, hashes = decode_batch_on(blobs, device, normalize=self.normalize, ignore_index=self.ignore_index)
        return self._batch(index, keys, hashes, tensors)

    def _assemble(
        self,
        index: int,
        keys: list[tuple[int, int]],
        blobs: list[memoryview],
        *,
        pin: bool,
        pool: BufferPool | SharedSlabPool | None,
    ) -> SparseKDBatch:
        """The batch from its records' bytes, decoded and padded on the host in one pass (:mod:`.batch_decode`)."""
        tensors, hashes = decode_batch(
            blobs, normalize=self.normalize, ignore_index=self.ignore_index, pin=pin, pool=pool
        )
        batch = self._batch(index, keys, hashes, tensors)
        if isinstance(pool, SharedSlabPool):  # pickled to the main process as the slab's handle
            batch.__dict__["_slab"] = pool.reduce(tensors)  # not a field: copies and moves do not carry it
        return batch


def _checked_manifests(
    infos: dict[int, ShardInfo], allow_mixed: bool, allow_unsealed: bool
) -> dict[int, ShardManifest]:
    """The shards' manifests, once they may be trained on together (:class:`ShardSetError` if not)."""
    manifests: dict[int, ShardManifest] = {}
    for shard, info in infos.items():
        if info.manifest is None:  # GetShard of a damaged shard is DATA_LOSS; this is defensive
            raise ShardSetError(f"shard {shard}: its manifest cannot be read ({info.damage})")
        manifests[shard] = info.manifest
    unsealed = [shard for shard, info in infos.items() if not info.sealed]
    if unsealed:
        what = f"shards {unsealed} are not sealed: they may still be being written"
        if not allow_unsealed:
            raise ShardSetError(f"{what}; seal them when complete, or pass allow_unsealed=True")
        warnings.warn(f"{what}: training on what they hold now", stacklevel=3)
    refuse_mixed(manifests, allow_mixed)
    return manifests


def refuse_mixed(manifests: dict[int, ShardManifest], allow_mixed: bool) -> None:
    """:class:`ShardSetError` naming the first difference between the shards' targets, unless ``allow_mixed``."""
    (first, reference), *rest = manifests.items()
    for shard, manifest in rest:
        differences = reference.differences(manifest, runs=False)
        if differences and not allow_mixed:
            raise ShardSetError(
                f"shards {first} and {shard} hold different targets ("
                f"{ShardManifest.describe(differences, f'shard {first}', f'shard {shard}')}): "
                "pass allow_mixed=True to train on them together"
            )


def _refuse_duplicates(manifests: dict[int, ShardManifest], seqs: dict[int, npt.NDArray[np.uint64]]) -> None:
    """:class:`ShardSetError` if two shards of the same corpus (their runs' fingerprint) hold the same seq."""
    by_corpus: dict[str, list[int]] = {}
    for shard, manifest in manifests.items():
        if manifest.run is not None and manifest.run.corpus_fingerprint:
            by_corpus.setdefault(manifest.run.corpus_fingerprint, []).append(shard)
    for corpus, shards in by_corpus.items():
        for i, a in enumerate(shards):
            for b in shards[i + 1 :]:
                both = np.intersect1d(seqs[a], seqs[b], assume_unique=True)
                if both.size:
                    raise ShardSetError(
                        f"shards {a} and {b} both hold seq {int(both[0])} of corpus {corpus} ({both.size} seqs in "
                        "all): their targets would be trained on twice; pass allow_duplicates=True if that is meant"
                    )


class _Background:
    """Runs ``produce()``'s iteration in a daemon thread, up to ``depth`` items ahead of the consumer;
    an exception there is raised in the consumer's loop."""

    def __init__(self, produce: Callable[[], Iterable[Any]], *, depth: int, name: str) -> None:
        self._produce = produce
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        items: Iterator[Any] = iter(())
        try:
            items = iter(self._produce())
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:
            self._put(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own clean-up (its finally blocks) runs on this thread
                close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a daemon: one stuck in a retrying read is left to finish alone


_END = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def verify_alignment(input_ids: Tensor | npt.ArrayLike, batch: SparseKDBatch) -> None:
    """Raise :class:`AlignmentError` unless ``input_ids [B, T]`` are the ids ``batch``'s targets belong to.

    Compares each row's xxh64 with the hash stored in its record's header; the error names the
    shard and seq and the first differing position.
    """
    ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, Tensor) else np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] != len(batch.input_hashes):
        raise AlignmentError(f"input_ids: expected shape [B={len(batch.input_hashes)}, T], got {list(ids.shape)}")
    lengths = batch.attention_mask.sum(dim=1).tolist()
    for row, expected in enumerate(batch.input_hashes):
        shard, seq = int(batch.shards[row]), int(batch.seqs[row])
        n = int(lengths[row])
        mine = ids[row, :n] if ids.shape[1] >= n else ids[row]
        if ids.shape[1] < n or records.input_ids_hash(mine) != expected:
            stored = batch.input_ids[row, :n].cpu().numpy()
            if mine.shape[0] != n:
                where = f"the record has {n} positions, the caller's row has {ids.shape[1]}"
            else:
                diff = np.flatnonzero(mine != stored)
                at = int(diff[0]) if diff.size else 0
                where = f"first difference at position {at}: caller has {int(mine[at])}, record has {int(stored[at])}"
            raise AlignmentError(f"shard {shard} seq {seq}: token ids do not match the cached record ({where})")
