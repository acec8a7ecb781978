"""The record store: every shard under one data directory (:mod:`.layout` has the files).

:class:`Store` opens the existing shards at start, each on its own: a shard that fails to open
is kept as a damaged shard (listed, with the reason) and never stops the others. It creates new
shards atomically, refuses a second server on the same directory (a lock file), and answers the
readiness question: can this server take writes now (directory writable, free space above the
floor, no damaged shard)? The shards themselves are :class:`~logitcache.server.shard.Shard`;
errors are :mod:`logitcache.server.errors` (this module imports no gRPC).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from logitcache.core.manifest import ShardInfo, ShardManifest
from logitcache.server import layout
from logitcache.server.disk import DiskSpace
from logitcache.server.errors import InvalidRequestError, ManifestError, ShardExistsError, ShardNotFoundError
from logitcache.server.shard import Shard

__all__ = ["Store"]

log = logging.getLogger(__name__)
_READY_ROOM = 1 << 20  # ready: room above the floor for at least a small write


class Store:
    """All shards under ``data_dir``. Opens the existing ones at start."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        initial_map_size: int = 64 << 20,
        max_map_size: int = 1 << 40,
        min_free_bytes: int = 0,
    ) -> None:
        if initial_map_size < 1 << 20 or max_map_size < initial_map_size:
            raise ValueError(f"map sizes: expected 1 MiB <= initial ({initial_map_size}) <= max ({max_map_size})")
        self.data_dir = Path(data_dir).resolve()
        self.initial_map_size = initial_map_size
        self.max_map_size = max_map_size
        self._shards_dir = self.data_dir / "shards"
        self._shards_dir.mkdir(parents=True, exist_ok=True)
        layout.fsync_dir(self.data_dir)
        self.disk = DiskSpace(self.data_dir, min_free_bytes)
        self._lock_file = layout.lock_data_dir(self.data_dir)
        self._lock = threading.Lock()
        self._shards: dict[int, Shard] = {}
        self._creating: dict[int, threading.Event] = {}  # shards whose files are being made or removed
        started = time.monotonic()
        for entry in sorted(self._shards_dir.iterdir()):
            if entry.name.endswith((layout.CREATING_SUFFIX, layout.DELETING_SUFFIX)):
                shutil.rmtree(entry, ignore_errors=True)  # a creation or deletion interrupted by a crash
                continue
            shard_id = layout.shard_id_of(entry)
            if shard_id is None:
                log.warning("ignoring %s: not a shard directory", entry)
                continue
            self._shards[shard_id] = self._shard(shard_id, entry)
        damaged = [s.shard_id for s in self._shards.values() if s.damage is not None]
        log.info(
            "store at %s: %d shard(s) opened and checked in %.1f s%s",
            self.data_dir,
            len(self._shards),
            time.monotonic() - started,
            f", damaged: {damaged}" if damaged else "",
        )

    def _shard(self, shard_id: int, path: Path) -> Shard:
        return Shard(
            shard_id, path, initial_map_size=self.initial_map_size, max_map_size=self.max_map_size, disk=self.disk
        )

    def _path(self, shard_id: int) -> Path:
        if not 0 <= shard_id <= layout.MAX_SHARD_ID:
            raise InvalidRequestError(f"shard: expected 0 <= shard < 2**32, got {shard_id}")
        return layout.shard_dir(self.data_dir, shard_id)

    def create_shard(self, shard_id: int, manifest: ShardManifest, *, exist_ok: bool = False) -> Shard:
        """A new shard (or, with ``exist_ok``, the existing one with an equal manifest).

        The store's lock is not held while the shard's files are made (fsyncs): lookups, which the
        server makes on its event loop, never wait for a creation. A second creation of the same
        shard waits for the first one to finish, then looks again.
        """
        path = self._path(shard_id)
        while True:
            with self._lock:
                existing = self._shards.get(shard_id)
                underway = self._creating.get(shard_id)
                if existing is None and underway is None:
                    if path.exists():
                        raise ShardExistsError(
                            f"shard {shard_id}: {path} exists but is not open on this server "
                            "(restart it to load a copied shard)"
                        )
                    done = self._creating[shard_id] = threading.Event()
                    break
            if underway is not None:  # being made, or being deleted: look again once that is done
                underway.wait()
                continue
            assert existing is not None
            return self._existing(existing, manifest, exist_ok)
        try:
            shard = Shard.create(
                shard_id,
                path,
                manifest,
                initial_map_size=self.initial_map_size,
                max_map_size=self.max_map_size,
                disk=self.disk,
            )
            with self._lock:
                self._shards[shard_id] = shard
        finally:
            with self._lock:
                del self._creating[shard_id]
            done.set()
        log.info("shard %d created: %s", shard_id, manifest.to_json())
        return shard

    @staticmethod
    def _existing(shard: Shard, manifest: ShardManifest, exist_ok: bool) -> Shard:
        if not exist_ok:
            damaged = "" if shard.damage is None else f" (damaged: {shard.damage})"
            raise ShardExistsError(f"shard {shard.shard_id} already exists{damaged}")
        shard.require_intact()
        assert shard.manifest is not None  # an intact shard has one
        if shard.manifest != manifest:
            differences = ShardManifest.describe(shard.manifest.differences(manifest), "stored", "requested")
            raise ManifestError(f"shard {shard.shard_id} exists with a different manifest: {differences}")
        return shard

    def delete_shard(self, shard_id: int, *, force: bool = False) -> ShardInfo:
        """Delete a shard and its files; its :class:`ShardInfo` just before. A sealed shard needs ``force``.

        A write or seal under way finishes first (:meth:`Shard.retire`); a Read or ListSeqs stream
        under way ends with NOT_FOUND at its next chunk; later calls are NOT_FOUND, and a creation
        of the same shard waits until the files are gone. The directory is renamed to
        ``<name>.deleting`` (atomic) before it is removed, so a crash leaves either the whole shard
        or a leftover the next start clears. A damaged shard can be deleted like any other.
        """
        path = self._path(shard_id)
        with self._lock:
            shard = self._shards.get(shard_id)
            if shard is None or shard_id in self._creating:  # absent, or being deleted right now
                raise ShardNotFoundError(f"shard {shard_id} does not exist on this server")
            done = self._creating[shard_id] = threading.Event()
        try:
            info = shard.retire(force=force)  # sealed without force: refused here, nothing changed
            doomed = path.with_name(path.name + layout.DELETING_SUFFIX)
            shutil.rmtree(doomed, ignore_errors=True)  # what an earlier deletion could not remove
            try:
                os.replace(path, doomed)
            except OSError:  # nothing is gone: open the shard again
                reopened = self._shard(shard_id, path)
                with self._lock:
                    self._shards[shard_id] = reopened
                raise
            with self._lock:
                del self._shards[shard_id]
            try:
                layout.fsync_dir(path.parent)
                shutil.rmtree(doomed)
            except OSError as exc:  # the shard is gone from this server; the next start clears the rest
                log.warning("shard %d: removing %s: %s (the next start removes it)", shard_id, doomed, exc)
        finally:
            with self._lock:
                del self._creating[shard_id]
            done.set()
        log.info("shard %d deleted (%d sequences%s)", shard_id, info.sequences, ", sealed" if info.sealed else "")
        return info

    def infos(self) -> list[ShardInfo]:
        """:meth:`Shard.stats` of every shard, by number (one deleted meanwhile is left out)."""
        found = []
        for shard in self.shards():
            try:
                found.append(shard.stats())
            except ShardNotFoundError:
                continue
        return found

    def get(self, shard_id: int) -> Shard:
        """The shard (possibly damaged: see :attr:`Shard.damage`); ``ShardNotFoundError`` if absent."""
        self._path(shard_id)
        with self._lock:
            shard = self._shards.get(shard_id)
        if shard is None:
            raise ShardNotFoundError(f"shard {shard_id} does not exist on this server")
        return shard

    def shards(self) -> list[Shard]:
        with self._lock:
            return [self._shards[k] for k in sorted(self._shards)]

    def unready(self) -> list[str]:
        """Why the server cannot take writes now (for ``/readyz``); empty when it can."""
        reasons = []
        try:
            with tempfile.NamedTemporaryFile(dir=self.data_dir, prefix=".write-probe-"):
                pass
        except OSError as exc:
            reasons.append(f"the data directory {self.data_dir} is not writable: {exc}")
        shortage = self.disk.shortage(_READY_ROOM)
        if shortage is not None:
            reasons.append(shortage)
        reasons += [f"shard {s.shard_id} is damaged: {s.damage}" for s in self.shards() if s.damage is not None]
        return reasons

    def close(self) -> None:
        with self._lock:
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            shard.close()
        self._lock_file.close()
