"""Training batches from exported shards, streamed by Hugging Face ``datasets`` (``logitcache[datasets]``).

Example (``torchrun``: each rank reads its own part; no cache server is involved)::

    reader = ExportedShardReader("s3://bucket/kd-cache", batch_size=8)   # every shard-* export in it
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        for batch in reader:                      # SparseKDBatch, as SparseKDLoader yields
            loss = kd_loss(student(batch.input_ids).logits, batch.target_ids, batch.target_probs)
            ...
            checkpoint["reader"] = reader.state_dict()    # reader.load_state_dict(...) continues after it

The streaming, the partitioning and the resumption are the ``datasets`` library's: the exports'
parquet files are one streaming ``IterableDataset`` (``load_dataset("parquet", streaming=True)``),
split across ranks by ``split_dataset_by_node`` — whole files per rank when their number is a
multiple of ``world_size``, else every ``world_size``-th row — and resumed from its ``state_dict``.
Unlike :class:`~logitcache.training.SparseKDLoader`'s, the ranks' batch counts may differ (by the
files' sizes, or by one row), ``drop_last`` included: under DDP bound the steps (``max_steps``, as
Hugging Face ``Trainer`` needs for an iterable dataset anyway) or wrap the loop in
``torch.distributed.algorithms.Join``. Each batch of ``batch_size`` rows is
re-encoded into its records (:func:`~logitcache.exports.columns.records_from_batch`, which refuses a
row that does not match its checksum) and decoded as the loader decodes records
(:func:`~logitcache.training.batch_decode.decode_batch`), so a batch carries exactly the targets
the cache stored.

``shuffle``: each epoch visits the files in another order (a function of ``seed`` and the epoch,
the same on every rank) and, through ``datasets``' ``shuffle``, draws rows from a buffer of
``shuffle_buffer`` rows. A resumed epoch continues the same order, but rows that were in the
buffer when the state was saved are not seen again that epoch (``datasets`` does not save the
buffer; it also pauses a few seconds at the end of each buffered epoch, for a pyarrow threading
issue). ``shuffle_buffer=0`` shuffles files only, and a resumed epoch then yields exactly the
batches the uninterrupted one would have.

The manifests must agree (:class:`~logitcache.training.loader.ShardSetError` names the difference;
``allow_mixed=True`` trains on them together). Iterate in the main process (``num_workers=0``, as
with :class:`~logitcache.training.SparseKDLoader`, whose decoding is already off the Python thread).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from logitcache.extras import require

require("datasets", extra="datasets", by="logitcache.exports.reader")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import IterableDataset, get_worker_info  # noqa: E402

from logitcache.core.manifest import ShardManifest  # noqa: E402
from logitcache.exports.columns import records_from_batch  # noqa: E402
from logitcache.exports.files import exported_folders, part_files, read_marker  # noqa: E402
from logitcache.training.batch_decode import decode_batch  # noqa: E402
from logitcache.training.loader import (  # noqa: E402
    LoaderStateError,
    ShardSetError,
    SparseKDBatch,
    default_rank,
    refuse_mixed,
)

__all__ = ["ExportedShardReader"]

_STATE_VERSION = 1
_STATE_KEYS = ("folders", "batch_size", "rank", "world_size", "shuffle", "shuffle_buffer", "seed", "drop_last")


class ExportedShardReader(IterableDataset[SparseKDBatch]):
    """Batches of one rank's part of exported shards (see the module docstring).

    ``sources``: export folders, or folders holding ``shard-*`` exports (``exported_folders``), as
    paths or fsspec URLs. ``rank`` / ``world_size`` default as :class:`~logitcache.training.SparseKDLoader`'s.
    """

    def __init__(
        self,
        sources: str | Sequence[str],
        *,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 1024,
        seed: int = 0,
        drop_last: bool = False,
        normalize: bool = True,
        ignore_index: int = -100,
        allow_mixed: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer: expected >= 0, got {shuffle_buffer}")
        rank_now, world_now = default_rank()
        self.rank = rank_now if rank is None else rank
        self.world_size = world_now if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.batch_size, self.shuffle, self.shuffle_buffer, self.seed = batch_size, shuffle, shuffle_buffer, seed
        self.drop_last, self.normalize, self.ignore_index = drop_last, normalize, ignore_index
        self.storage_options = storage_options
        paths = [sources] if isinstance(sources, str) else list(sources)
        if not paths:
            raise ValueError("sources: expected at least one export")
        self.folders = [folder for path in paths for folder in exported_folders(path, storage_options)]
        self.manifests: dict[int, ShardManifest] = {}
        self.sequences = 0
        for folder in self.folders:
            marker, manifest = read_marker(folder, storage_options)
            shard = int(marker["shard"])
            if shard in self.manifests:
                raise ShardSetError(f"shard {shard} is exported twice in {paths}: pass each export once")
            self.manifests[shard] = manifest
            self.sequences += int(marker["sequences"])
        refuse_mixed(self.manifests, allow_mixed)
        if self.sequences == 0:
            raise ShardSetError(f"{paths}: the exports hold no sequences")
        self.files = [file for folder in self.folders for file in part_files(folder, storage_options)]
        self.epoch = 0
        self._loaded: tuple[list[str], Any] | None = None  # files in an order, as a datasets.IterableDataset
        self._resume: dict[str, Any] | None = None  # the datasets state to continue from, for the next epoch
        self._dataset_state: dict[str, Any] | None = None  # after the last batch yielded
        self._batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next iteration as epoch ``epoch`` (``seed + epoch``); forgets a loaded state."""
        if epoch != self.epoch:
            self._resume, self._dataset_state, self._batches_done = None, None, 0
        self.epoch = epoch

    def _dataset(self) -> Any:
        import datasets
        from datasets.distributed import split_dataset_by_node

        files = self.files
        if self.shuffle:  # the epoch's file order, the same on every rank
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(files))
            files = [files[i] for i in order]
        if self._loaded is None or self._loaded[0] != files:  # resolving the files takes a while: once per order
            found = datasets.load_dataset(
                "parquet", data_files=files, split="train", streaming=True, storage_options=self.storage_options
            )
            self._loaded = (files, found)
        ds = self._loaded[1]
        if self.shuffle and self.shuffle_buffer > 0:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        ds = ds.with_format("arrow")
        ds.set_epoch(self.epoch)  # on the dataset iterated: each derived dataset has an epoch of its own
        return ds

    def __iter__(self) -> Iterator[SparseKDBatch]:
        if get_worker_info() is not None:
            raise RuntimeError(
                "ExportedShardReader is iterated in a DataLoader worker: use num_workers=0 (each worker "
                "would stream the whole of this rank's part)"
            )
        ds = self._dataset()
        if self._resume is not None:  # a loaded state: continue after its last batch
            ds.load_state_dict(self._resume)
        else:  # the epoch from its start
            self._dataset_state, self._batches_done = None, 0
        start, self._resume = self._batches_done, None
        where = ", ".join(self.folders)
        for index, table in enumerate(ds.iter(batch_size=self.batch_size, drop_last_batch=self.drop_last), start=start):
            rows = list(records_from_batch(table, self.manifests, where))
            tensors, hashes = decode_batch(
                [data for _, _, data in rows], normalize=self.normalize, ignore_index=self.ignore_index
            )
            self._dataset_state, self._batches_done = ds.state_dict(), index + 1
            yield SparseKDBatch(
                **tensors,
                shards=torch.tensor([shard for shard, _, _ in rows], dtype=torch.int64),
                seqs=torch.tensor([seq if seq < 2**63 else -1 for _, seq, _ in rows], dtype=torch.int64),
                input_hashes=hashes,
                epoch=self.epoch,
                batch_index=index,
            )

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands: after the last batch yielded (the epoch's start before the first; its
        end after the last, and a reader loaded with that state yields nothing until ``set_epoch``)."""
        return {
            "version": _STATE_VERSION,
            **{key: getattr(self, key) for key in _STATE_KEYS},
            "epoch": self.epoch,
            "batches_done": self._batches_done,
            "dataset": self._dataset_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration starts after its last batch."""
        if state.get("version") != _STATE_VERSION:
            raise LoaderStateError(f"version: expected {_STATE_VERSION}, got {state.get('version')!r}")
        for key in _STATE_KEYS:
            if state.get(key) != getattr(self, key):
                raise LoaderStateError(
                    f"{key} differs from the saved state (saved {state.get(key)!r}, "
                    f"this reader has {getattr(self, key)!r})"
                )
        epoch, done, dataset = state.get("epoch"), state.get("batches_done"), state.get("dataset")
        if not isinstance(epoch, int) or epoch < 0:
            raise LoaderStateError(f"epoch: expected an integer >= 0, got {epoch!r}")
        if not isinstance(done, int) or done < 0 or (done > 0) != isinstance(dataset, dict):
            raise LoaderStateError(f"batches_done {done!r} and the dataset state {type(dataset).__name__} disagree")
        self.epoch, self._batches_done, self._resume = epoch, done, dataset
        self._dataset_state = dataset
