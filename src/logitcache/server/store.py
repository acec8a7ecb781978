"""The record store: one LMDB environment per shard under the data directory.

Layout::

    <data_dir>/shards/<shard:010d>/data.mdb, lock.mdb

Inside a shard's environment, the named sub-database ``records`` maps the seq (8-byte
big-endian, so cursor order is seq order) to one packed sequence record, and ``meta`` holds the
manifest (JSON), the sealed flag and running totals (positions, record bytes), all updated in the
same transaction as the records they count.

Durability: the environment is opened with ``sync=True, metasync=True``, so a write transaction's
commit returns only after LMDB has flushed it to disk. :meth:`Shard.write_batch` returns (and the
service acknowledges) only after that commit: an acknowledged record survives a killed process,
and a batch that did not commit is not visible at all (LMDB's copy-on-write B-tree never exposes a
half-written transaction).

The map grows on demand: on ``MapFullError`` the transaction is aborted, the map doubled (up to
``max_map_size``; past it :class:`StoreFullError`) and the batch retried. LMDB forbids resizing
while this process has transactions open, so reads and writes hold a shared gate that a resize
takes exclusively. Reads run concurrently with writes (LMDB MVCC); each read transaction is
short (one batch of records), so a streaming reader never pins old pages for long.

Errors are typed (:class:`StoreError` subclasses) and carry the gRPC status name the service
answers with; this module does not import gRPC.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

from logitcache import records
from logitcache.manifest import ManifestMismatchError, ShardInfo, ShardManifest

__all__ = [
    "CorruptRecordError",
    "InvalidRequestError",
    "RecordConflictError",
    "SeqNotFoundError",
    "Shard",
    "ShardExistsError",
    "ShardNotFoundError",
    "ShardSealedError",
    "Store",
    "StoreError",
    "StoreFullError",
    "WriteResult",
]

log = logging.getLogger(__name__)

MAX_SHARD_ID = 2**32 - 1
MAX_SEQ = 2**64 - 2  # 2**64 - 1 is reserved: an exclusive range end must be able to pass the last seq
_KEY = struct.Struct(">Q")
_U64 = struct.Struct("<Q")
_SHARD_DIR = re.compile(r"[0-9]{10}")
_META_MANIFEST = b"manifest"
_META_SEALED = b"sealed"
_META_POSITIONS = b"positions"
_META_BYTES = b"record_bytes"


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class. ``code`` is the gRPC status name the service answers with."""

    code = "INTERNAL"


class InvalidRequestError(StoreError):
    code = "INVALID_ARGUMENT"


class ShardNotFoundError(StoreError):
    code = "NOT_FOUND"


class SeqNotFoundError(StoreError):
    code = "NOT_FOUND"


class ShardExistsError(StoreError):
    code = "ALREADY_EXISTS"


class RecordConflictError(StoreError):
    code = "ALREADY_EXISTS"


class ShardSealedError(StoreError):
    code = "FAILED_PRECONDITION"


class ManifestError(StoreError):
    code = "FAILED_PRECONDITION"


class StoreFullError(StoreError):
    code = "RESOURCE_EXHAUSTED"


class CorruptRecordError(StoreError):
    code = "DATA_LOSS"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WriteResult:
    written: int  # records stored (new or overwritten)
    unchanged: int  # records already stored with identical bytes
    positions: int  # positions in the batch's records
    written_positions: int = 0  # positions in the records stored by this batch
    written_bytes: int = 0  # bytes of the records stored by this batch


class _Gate:
    """Many holders at once, or one exclusive holder (a map resize) once the others have left."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                if self._inside == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._inside:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _key(seq: int) -> bytes:
    return _KEY.pack(seq)


def _check_seq(seq: int) -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise InvalidRequestError(f"seq: expected 0 <= seq <= 2**64 - 2, got {seq}")


# --------------------------------------------------------------------------- shard


class Shard:
    """One shard: an LMDB environment with its manifest. Thread-safe."""

    def __init__(self, shard_id: int, path: Path, *, initial_map_size: int, max_map_size: int) -> None:
        self.shard_id = shard_id
        self.path = path
        self.max_map_size = max_map_size
        self._env = lmdb.open(
            str(path),
            map_size=initial_map_size,
            max_dbs=4,
            max_readers=1024,
            sync=True,
            metasync=True,
            readahead=False,
        )
        self._env.reader_check()  # clear slots of readers that died with an earlier process
        self._records = self._env.open_db(b"records")
        self._meta = self._env.open_db(b"meta")
        info = self._env.info()
        if info["map_size"] < initial_map_size:
            self._env.set_mapsize(initial_map_size)
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(_META_MANIFEST)
            if raw is None:
                raise StoreError(f"shard {shard_id}: {path} has no manifest")
            self.manifest = ShardManifest.from_json(raw)
            self._sealed = txn.get(_META_SEALED) == b"1"
        self._write_lock = threading.Lock()
        self._gate = _Gate()

    @classmethod
    def create(
        cls, shard_id: int, path: Path, manifest: ShardManifest, *, initial_map_size: int, max_map_size: int
    ) -> Shard:
        """Create the shard atomically: built in a temporary directory, then renamed into place."""
        tmp = path.with_name(path.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        env = lmdb.open(str(tmp), map_size=initial_map_size, max_dbs=4, sync=True, metasync=True)
        try:
            meta = env.open_db(b"meta")
            env.open_db(b"records")
            with env.begin(write=True, db=meta) as txn:
                txn.put(_META_MANIFEST, manifest.to_json().encode())
                txn.put(_META_POSITIONS, _U64.pack(0))
                txn.put(_META_BYTES, _U64.pack(0))
        finally:
            env.close()
        _fsync_dir(tmp)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return cls(shard_id, path, initial_map_size=initial_map_size, max_map_size=max_map_size)

    @property
    def sealed(self) -> bool:
        return self._sealed

    def close(self) -> None:
        with self._write_lock, self._gate.exclusive():
            self._env.close()

    # ----------------------------------------------------------------- writes

    def validate(self, items: list[tuple[int, bytes]]) -> list[records.RecordHeader]:
        """Full validation of a batch against the record format and the manifest (no lock held)."""
        seen: set[int] = set()
        headers = []
        for seq, data in items:
            _check_seq(seq)
            if seq in seen:
                raise InvalidRequestError(f"records: seq {seq} appears twice in one batch")
            seen.add(seq)
            try:
                header = records.decode(data).header
                self.manifest.check(header)
            except ManifestMismatchError as exc:
                raise ManifestError(f"record for seq {seq} does not match shard {self.shard_id}: {exc}") from exc
            except records.RecordError as exc:
                raise InvalidRequestError(f"record for seq {seq} is malformed: {exc}") from exc
            headers.append(header)
        return headers

    def write_batch(self, items: list[tuple[int, bytes]], *, overwrite: bool = False) -> WriteResult:
        """Validate and store a batch in one durable transaction; all of it or none of it.

        Everything that can refuse the batch (format, manifest, sealed shard, conflicts) is decided
        before the write transaction opens, and the map is grown ahead of it: a write transaction
        is aborted only if that estimate was short, because aborting stalls while other threads
        are inside LMDB (py-lmdb waits for them).
        """
        headers = self.validate(items)
        positions = sum(h.num_positions for h in headers)
        with self._write_lock:
            stored = self._stored(items)
            changed = [
                (item, header) for item, header in zip(items, headers, strict=True) if stored.get(item[0]) != item[1]
            ]
            if self._sealed:
                if changed:
                    raise ShardSealedError(f"shard {self.shard_id} is sealed: it accepts no more writes")
                return WriteResult(0, len(items), positions)  # a retry of what is stored: a no-op even now
            if not changed:
                return WriteResult(0, len(items), positions)
            if not overwrite:
                for (seq, _), _ in changed:
                    if seq in stored:
                        raise RecordConflictError(
                            f"seq {seq} of shard {self.shard_id} is stored with different bytes "
                            "(set overwrite to replace it)"
                        )
            self._reserve(sum(len(data) for (_, data), _ in changed))
            while True:
                try:
                    with self._gate.shared():
                        written = self._write_txn(changed, stored)
                    return WriteResult(len(changed), len(items) - len(changed), positions, *written)
                except lmdb.MapFullError:
                    self._grow(reason="the batch did not fit")

    def _stored(self, items: list[tuple[int, bytes]]) -> dict[int, bytes]:
        """The stored records among ``items``' seqs (none to look up when they all lie past the last key)."""
        keys = [_key(seq) for seq, _ in items]
        with self._gate.shared(), self._env.begin(db=self._records) as txn:
            cursor = txn.cursor()
            last = cursor.key() if cursor.last() else None
            if last is None or min(keys) > last:
                return {}
            found = {}
            for (seq, _), key in zip(items, keys, strict=True):
                data = txn.get(key)
                if data is not None:
                    found[seq] = data
            return found

    def _write_txn(
        self, changed: list[tuple[tuple[int, bytes], records.RecordHeader]], stored: dict[int, bytes]
    ) -> tuple[int, int]:
        """Put the new or replaced records and update the totals. ``(positions, bytes)`` written."""
        written_positions = written_bytes = 0
        keys = [_key(seq) for (seq, _), _ in changed]
        with self._env.begin(write=True) as txn:
            meta_positions = self._counter(txn, _META_POSITIONS)
            meta_bytes = self._counter(txn, _META_BYTES)
            cursor = txn.cursor(db=self._records)
            last = cursor.key() if cursor.last() else None
            # new keys in ascending order past the last stored one: append without searching
            appending = not stored and (last is None or keys[0] > last)
            appending = appending and all(a < b for a, b in itertools.pairwise(keys))
            for ((seq, data), header), key in zip(changed, keys, strict=True):
                old = stored.get(seq)
                if old is not None:
                    meta_positions -= records.peek_positions(old)  # even if its checksum fails
                    meta_bytes -= len(old)
                txn.put(key, data, append=appending, db=self._records)
                written_positions += header.num_positions
                written_bytes += len(data)
            txn.put(_META_POSITIONS, _U64.pack(max(0, meta_positions + written_positions)), db=self._meta)
            txn.put(_META_BYTES, _U64.pack(max(0, meta_bytes + written_bytes)), db=self._meta)
        return written_positions, written_bytes

    def _counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def _reserve(self, nbytes: int) -> None:
        """Grow the map before a write that may not fit (copy-on-write: twice the data, plus slack).

        At the size limit nothing is grown: the write is tried and LMDB decides.
        """
        info = self._env.info()
        used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        needed = used + 2 * nbytes + (64 << 10)
        if needed > info["map_size"] and info["map_size"] < self.max_map_size:
            self._grow(minimum=min(needed, self.max_map_size), reason=f"a batch of {nbytes} bytes needs room")

    def _grow(self, *, minimum: int = 0, reason: str) -> None:
        current = self._env.info()["map_size"]
        if current >= self.max_map_size:
            raise StoreFullError(
                f"shard {self.shard_id} has no room: {reason}, and its map is at the limit of "
                f"{self.max_map_size} bytes (--max-shard-bytes)"
            )
        new_size = min(self.max_map_size, max(current * 2, minimum))
        with self._gate.exclusive():
            self._env.set_mapsize(new_size)
        log.info("shard %d: map grown from %d to %d bytes", self.shard_id, current, new_size)

    def seal(self) -> None:
        with self._write_lock:
            if self._sealed:
                return
            while True:
                try:
                    with self._gate.shared(), self._env.begin(write=True, db=self._meta) as txn:
                        txn.put(_META_SEALED, b"1")
                    break
                except lmdb.MapFullError:
                    self._grow(reason="sealing")
            self._sealed = True

    # ----------------------------------------------------------------- reads

    def get(self, seq: int) -> bytes:
        """One record, checksum verified. :class:`SeqNotFoundError` if absent."""
        _check_seq(seq)
        with self._gate.shared(), self._env.begin(db=self._records) as txn:
            data = txn.get(_key(seq))
        if data is None:
            raise SeqNotFoundError(f"seq {seq} is not in shard {self.shard_id}")
        return self._verified(seq, data)

    def _verified(self, seq: int, data: bytes) -> bytes:
        try:
            records.read_header(data)
        except records.RecordError as exc:
            raise CorruptRecordError(f"seq {seq} of shard {self.shard_id} is corrupted on disk: {exc}") from exc
        return data

    def read_seqs(self, seqs: Iterable[int], chunk_bytes: int = 1 << 20) -> Iterator[list[tuple[int, bytes]]]:
        """Records for ``seqs`` in that order, in chunks of about ``chunk_bytes``; NOT_FOUND if one is missing.

        Each chunk is read in its own short transaction (nothing is held between chunks).
        """
        pending = list(seqs)
        for seq in pending:
            _check_seq(seq)
        at = 0
        while at < len(pending):
            chunk: list[tuple[int, bytes]] = []
            size = 0
            with self._gate.shared(), self._env.begin(db=self._records) as txn:
                while at < len(pending):
                    seq = pending[at]
                    data = txn.get(_key(seq))
                    if data is None:
                        raise SeqNotFoundError(f"seq {seq} is not in shard {self.shard_id}")
                    if chunk and size + len(data) > chunk_bytes:
                        break  # a chunk never exceeds chunk_bytes, unless one record alone does
                    chunk.append((seq, data))
                    size += len(data)
                    at += 1
            yield [(seq, self._verified(seq, data)) for seq, data in chunk]

    def read_range(self, start: int, end: int, chunk_bytes: int = 1 << 20) -> Iterator[list[tuple[int, bytes]]]:
        """Records with ``start <= seq < end`` in seq order, in chunks of about ``chunk_bytes``."""
        if not 0 <= start <= MAX_SEQ + 1 or not 0 <= end <= MAX_SEQ + 1:
            raise InvalidRequestError(f"range: expected bounds in [0, 2**64 - 1], got [{start}, {end})")
        next_seq = start
        while next_seq < end:
            chunk: list[tuple[int, bytes]] = []
            size = 0
            with self._gate.shared(), self._env.begin(db=self._records) as txn:
                cursor = txn.cursor()
                found = cursor.set_range(_key(next_seq))
                while found:
                    seq = _KEY.unpack(cursor.key())[0]
                    if seq >= end:
                        found = False
                        break
                    data = cursor.value()
                    if chunk and size + len(data) > chunk_bytes:
                        break  # a chunk never exceeds chunk_bytes, unless one record alone does
                    chunk.append((seq, data))
                    size += len(data)
                    found = cursor.next()
            if not chunk:
                return
            next_seq = chunk[-1][0] + 1
            yield [(seq, self._verified(seq, data)) for seq, data in chunk]
            if not found:
                return

    def seqs_page(self, start: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ``(seq, positions)`` pairs with ``seq >= start``, in order."""
        out: list[tuple[int, int]] = []
        with self._gate.shared(), self._env.begin(db=self._records) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(_key(start))
            while found and len(out) < limit:
                seq = _KEY.unpack(cursor.key())[0]
                try:
                    positions = records.read_header(cursor.value()).num_positions
                except records.RecordError:
                    positions = -1
                out.append((seq, positions))
                found = cursor.next()
        return out

    def seq_runs(self, chunk: int = 1 << 16) -> Iterator[list[tuple[int, int]]]:
        """The stored seqs as maximal ``[start, end)`` runs of consecutive seqs, ascending, ``chunk`` runs at a time.

        A key-only cursor scan; each chunk is read in its own short transaction (nothing is held
        while the caller consumes a chunk), so a shard written meanwhile may show later writes.
        """
        next_seq = 0
        while True:
            runs: list[tuple[int, int]] = []
            start = end = -1
            resume: int | None = None
            with self._gate.shared(), self._env.begin(db=self._records) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_key(next_seq)):
                    for key in cursor.iternext(keys=True, values=False):
                        seq = _KEY.unpack(key)[0]
                        if seq != end:
                            if end >= 0:
                                runs.append((start, end))
                                if len(runs) == chunk:
                                    resume = seq  # the next chunk starts with this run
                                    break
                            start = seq
                        end = seq + 1
            if resume is None:
                if end >= 0:
                    runs.append((start, end))
                if runs:
                    yield runs
                return
            yield runs
            next_seq = resume

    def gaps(self, limit: int) -> tuple[int, list[tuple[int, int]]]:
        """Seqs missing between the first and the last stored: ``(count, up to limit [start, end) ranges)``."""
        missing = 0
        ranges: list[tuple[int, int]] = []
        previous_end: int | None = None
        for runs in self.seq_runs():
            for start, end in runs:
                if previous_end is not None:
                    missing += start - previous_end
                    if len(ranges) < limit:
                        ranges.append((previous_end, start))
                previous_end = end
        return missing, ranges

    def stats(self) -> ShardInfo:
        with self._gate.shared(), self._env.begin() as txn:
            entries = txn.stat(self._records)["entries"]
            positions = self._counter(txn, _META_POSITIONS)
            record_bytes = self._counter(txn, _META_BYTES)
            cursor = txn.cursor(db=self._records)
            first = _KEY.unpack(cursor.key())[0] if cursor.first() else None
            last = _KEY.unpack(cursor.key())[0] if cursor.last() else None
            map_size = self._env.info()["map_size"]
        data_file = self.path / "data.mdb"
        disk = data_file.stat().st_blocks * 512 if data_file.exists() else 0
        return ShardInfo(
            shard=self.shard_id,
            manifest=self.manifest,
            sealed=self._sealed,
            sequences=entries,
            positions=positions,
            record_bytes=record_bytes,
            disk_bytes=disk,
            first_seq=first,
            last_seq=last,
            map_size=map_size,
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- store


class Store:
    """All shards under ``data_dir``. Opens the existing ones at start."""

    def __init__(self, data_dir: Path | str, *, initial_map_size: int = 64 << 20, max_map_size: int = 1 << 40) -> None:
        if initial_map_size < 1 << 20 or max_map_size < initial_map_size:
            raise ValueError(f"map sizes: expected 1 MiB <= initial ({initial_map_size}) <= max ({max_map_size})")
        self.data_dir = Path(data_dir).resolve()
        self.initial_map_size = initial_map_size
        self.max_map_size = max_map_size
        self._shards_dir = self.data_dir / "shards"
        self._shards_dir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.data_dir)
        # one server per data directory: LMDB map resizes and the sealed flag are per process
        self._lock_file = open(self.data_dir / ".lock", "a+")  # noqa: SIM115 - held for the store's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise StoreError(f"{self.data_dir} is in use by another logitcache server") from exc
        self._lock = threading.Lock()
        self._shards: dict[int, Shard] = {}
        for entry in sorted(self._shards_dir.iterdir()):
            if entry.name.endswith(".creating"):
                shutil.rmtree(entry, ignore_errors=True)  # a creation interrupted by a crash
                continue
            if not (entry.is_dir() and _SHARD_DIR.fullmatch(entry.name) and int(entry.name) <= MAX_SHARD_ID):
                log.warning("ignoring %s: not a shard directory", entry)
                continue
            if not (entry / "data.mdb").is_file():
                log.error("ignoring shard directory %s: it has no data.mdb", entry)
                continue
            shard_id = int(entry.name)
            try:
                self._shards[shard_id] = Shard(
                    shard_id, entry, initial_map_size=initial_map_size, max_map_size=max_map_size
                )
            except (StoreError, lmdb.Error, ValueError) as exc:
                log.error("ignoring shard directory %s: %s", entry, exc)
        log.info("store at %s: %d shard(s) opened", self.data_dir, len(self._shards))

    def _path(self, shard_id: int) -> Path:
        if not 0 <= shard_id <= MAX_SHARD_ID:
            raise InvalidRequestError(f"shard: expected 0 <= shard < 2**32, got {shard_id}")
        return self._shards_dir / f"{shard_id:010d}"  # digits only: nothing can escape the data directory

    def create_shard(self, shard_id: int, manifest: ShardManifest, *, exist_ok: bool = False) -> Shard:
        path = self._path(shard_id)
        with self._lock:
            existing = self._shards.get(shard_id)
            if existing is not None:
                if exist_ok and existing.manifest == manifest:
                    return existing
                if exist_ok:
                    raise ManifestError(
                        f"shard {shard_id} exists with a different manifest: {existing.manifest.to_json()}"
                    )
                raise ShardExistsError(f"shard {shard_id} already exists")
            if path.exists():
                raise ShardExistsError(
                    f"shard {shard_id}: {path} exists but is not open on this server "
                    "(restart it to load a copied shard)"
                )
            shard = Shard.create(
                shard_id, path, manifest, initial_map_size=self.initial_map_size, max_map_size=self.max_map_size
            )
            self._shards[shard_id] = shard
        log.info("shard %d created: %s", shard_id, manifest.to_json())
        return shard

    def get(self, shard_id: int) -> Shard:
        self._path(shard_id)
        with self._lock:
            shard = self._shards.get(shard_id)
        if shard is None:
            raise ShardNotFoundError(f"shard {shard_id} does not exist on this server")
        return shard

    def shards(self) -> list[Shard]:
        with self._lock:
            return [self._shards[k] for k in sorted(self._shards)]

    def writable(self) -> bool:
        """The data directory accepts new files (for readiness probes; each probe its own file)."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.data_dir, prefix=".write-probe-"):
                pass
        except OSError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            shard.close()
        self._lock_file.close()
