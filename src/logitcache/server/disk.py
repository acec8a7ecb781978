"""Free space in the data directory: a full disk is a state the server reports, not a crash.

Before a shard is created or a transaction commits, :meth:`DiskSpace.check` refuses the work
with :class:`~logitcache.server.errors.DiskFullError` (``RESOURCE_EXHAUSTED``, retryable) when
the file system would fall under the floor (``--min-free-bytes``); the check is made on every
write, so writes resume as soon as space is freed, without a restart. When the file system runs
out anyway (another process filled it, or the floor is 0), LMDB's commit fails (a short write is
``EIO`` to LMDB, which reads like a hardware fault): :meth:`DiskSpace.explain` tells the two
apart by looking at the free space again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from logitcache.server.errors import DiskFullError, StoreError

__all__ = ["DiskSpace", "human_bytes"]


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class DiskSpace:
    """The free space of ``path``'s file system, against a floor of ``floor`` bytes."""

    def __init__(self, path: Path, floor: int) -> None:
        self.path = path
        self.floor = floor

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def shortage(self, needed: int = 0) -> str | None:
        """Why ``needed`` more bytes would not fit above the floor, or None."""
        free = self.free()
        if free >= needed + self.floor:
            return None
        return (
            f"the data directory {self.path} has {human_bytes(free)} free, under the "
            f"{human_bytes(needed)} needed plus the floor of {human_bytes(self.floor)} (--min-free-bytes)"
        )

    def check(self, needed: int, what: str) -> None:
        """Raise :class:`DiskFullError` if ``needed`` bytes would not fit above the floor."""
        reason = self.shortage(needed)
        if reason is not None:
            raise DiskFullError(f"{what}: {reason}; free some space (writes resume without a restart)")

    def explain(self, exc: BaseException, what: str, needed: int = 0) -> StoreError:
        """The error for a failed write: a full disk (``DiskFullError``), or else an internal one."""
        no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = self.shortage(needed)
        if no_space or reason is not None:
            return DiskFullError(
                f"{what}: the file system is full ({reason or exc}); free some space (writes resume without a restart)"
            )
        return StoreError(f"{what}: {type(exc).__name__}: {exc}")
