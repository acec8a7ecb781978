"""Host memory for the loader's batches, reused instead of allocated fresh for every batch.

Fresh memory costs a page fault per 4 KiB on its first write (the kernel zero-fills the page): for
the loader's batches (7 MB at ``B = 8, T = 2048, K = 38``) about as much CPU as decoding them, and
more in a DataLoader worker, where every batch also went into a new shared-memory segment. Both
pools hand out byte arrays that :func:`~logitcache.training.batch_decode.decode_batch` carves the
batch's tensors from (``torch.from_numpy`` views, whose storages hold the array).

- :class:`BufferPool` (the training process): a slab is reused once its reference count shows
  that no tensor, view, storage or array of it is alive anywhere.
- :class:`SharedSlabPool` (a DataLoader worker): slabs in shared memory. A batch built in one is
  pickled as the slab's handle and offsets (:meth:`SharedSlabPool.reduce`), not as a copy; the main
  process rebuilds its tensors as views of the same pages and, when the last of them is gone,
  clears the slab's lent flag, and the worker takes that slab again.

Each pool is used by one thread (the prefetch thread). When every slab is in use a batch gets
fresh memory, so a caller that keeps batches only costs the reuse.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["BufferPool", "SharedSlabPool", "rebuild_from_slab"]

_HEADER = 64  # a shared slab's first bytes: int64 lent flag (1 while the main process may use it), padding


class BufferPool:
    """Up to ``size`` slabs of this process's memory, each reused when nothing refers to it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slabs: list[np.ndarray] = []
        self._baseline = self._references(np.empty(0, dtype=np.uint8))

    def _references(self, slab: np.ndarray) -> int:
        return sys.getrefcount(slab)

    def take(self, nbytes: int) -> np.ndarray:
        """A byte array of ``nbytes`` that nothing else refers to."""
        for slab in self._slabs:
            if slab.nbytes >= nbytes and self._references(slab) <= self._baseline + 2:  # the list's, this loop's
                return slab[:nbytes]
        slab = np.empty(nbytes + nbytes // 4, dtype=np.uint8)  # room for a wider batch
        _keep(self._slabs, slab, self.size, len)
        return slab[:nbytes]


class _Slab:
    def __init__(self, nbytes: int) -> None:
        self.tensor = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(_HEADER + nbytes))
        self.array = self.tensor.numpy()
        self.lent = self.array[:8].view(np.int64)

    @property
    def capacity(self) -> int:
        return self.array.nbytes - _HEADER


class SharedSlabPool:
    """Up to ``size`` slabs in shared memory, each reused once the main process has released its batch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slabs: list[_Slab] = []

    def take(self, nbytes: int) -> np.ndarray:
        """A byte array of ``nbytes`` in a slab the main process does not hold; the slab counts as lent."""
        slab = next((s for s in self._slabs if not s.lent[0] and s.capacity >= nbytes), None)
        if slab is None:
            slab = _Slab(nbytes + nbytes // 4)
            _keep(self._slabs, slab, self.size, lambda s: s.capacity)
        slab.lent[0] = 1
        return slab.array[_HEADER : _HEADER + nbytes]

    def reduce(self, tensors: dict[str, Tensor]) -> tuple[Tensor, dict[str, tuple[int, str, tuple[int, ...]]]] | None:
        """``(slab, layout)`` if ``tensors`` lie in one of this pool's slabs, else None: the slab's
        uint8 tensor (pickled as a shared-memory handle) and each tensor's byte offset, dtype, shape."""
        first = next(iter(tensors.values())).data_ptr()
        for slab in self._slabs:
            start = slab.tensor.data_ptr()
            if start <= first < start + slab.array.nbytes:
                layout = {
                    name: (t.data_ptr() - start, str(t.dtype).removeprefix("torch."), tuple(t.shape))
                    for name, t in tensors.items()
                }
                return slab.tensor, layout
        return None


def rebuild_from_slab(slab: Tensor, layout: dict[str, tuple[int, str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """In the receiving process: the tensors of ``layout`` as views of ``slab``; when the last of them
    (and of any view of them) is gone, the slab's lent flag is cleared for the worker to reuse it."""
    array = slab.numpy()  # every view below keeps this array alive, and only they do
    tensors = {}
    for name, (offset, dtype, shape) in layout.items():
        item = np.dtype(dtype).itemsize
        size = int(np.prod(shape, dtype=np.int64)) * item
        tensors[name] = torch.from_numpy(array[offset : offset + size].view(dtype).reshape(shape))
    weakref.finalize(array, _release, slab.numpy()[:8].view(np.int64))
    return tensors


def _release(lent: np.ndarray) -> None:
    lent[0] = 0


def _keep(slabs: list[Any], slab: Any, size: int, capacity: Any) -> None:
    """Keep ``slab`` in a pool of at most ``size``: appended, or in place of a smaller one."""
    if len(slabs) < size:
        slabs.append(slab)
        return
    smallest = min(range(size), key=lambda i: capacity(slabs[i]))
    if capacity(slabs[smallest]) < capacity(slab):
        slabs[smallest] = slab
