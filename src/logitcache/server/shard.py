"""One shard: an LMDB environment (:mod:`.layout`) with its manifest. Thread-safe.

**Writes.** :meth:`Shard.validate` checks a batch against the record format and the manifest
(no lock: it runs in parallel). :meth:`Shard.commit` then stores several validated batches, from
any number of streams, in one durable transaction (group commit): each batch succeeds or fails
on its own (a conflict, a sealed shard), none is half stored, and the call returns once LMDB has
flushed the transaction to disk, so every result it returns is durable. Identical rewrites are
no-ops; different bytes for a stored seq are refused unless the batch asks to overwrite.

**The map** grows on demand, ahead of a write (so that a write transaction is aborted only when
the estimate was short), doubling up to ``max_map_size`` (then :class:`StoreFullError`). LMDB
forbids resizing while this process has transactions open, so reads and writes hold a shared
gate that a resize takes exclusively. Reads run beside writes (LMDB MVCC) in short
transactions, one per chunk, so a streaming reader never pins old pages for long.

**Damage.** When it opens, a shard checks its files before LMDB maps them (meta pages, every
page's structure) and then its tree (:mod:`.integrity`). A shard whose files fail is not opened
at all; one whose tree is inconsistent stays open. Either stays in the store with ``damage``
saying why. An open damaged shard still serves intact records by seq (each key's CRC, each
value's envelope, length and checksum are verified on every read), answers a seq not found with
``DATA_LOSS`` rather than ``NOT_FOUND`` (the damage may have hidden it), and refuses range reads,
seq listings and writes. Damage met later (LMDB errors, a value bound to another key) marks the
shard the same way. A record failing its checksum or its length is damage of that record only:
it is ``DATA_LOSS`` on read, counted in ``damaged_records``, and an overwrite repairs it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

from logitcache.core import records
from logitcache.core.manifest import ManifestMismatchError, ShardInfo, ShardManifest
from logitcache.server import integrity, layout
from logitcache.server.disk import DiskSpace
from logitcache.server.errors import (
    CorruptRecordError,
    InvalidRequestError,
    ManifestError,
    RecordConflictError,
    SeqNotFoundError,
    ShardDamagedError,
    ShardNotFoundError,
    ShardSealedError,
    StoreError,
    StoreFullError,
)

__all__ = ["MAX_SEQ", "Batch", "Shard", "WriteResult"]

log = logging.getLogger(__name__)

MAX_SEQ = 2**64 - 2  # 2**64 - 1 is reserved: an exclusive range end must be able to pass the last seq
_SLACK = 64 << 10  # room a transaction needs beyond twice its data (copy-on-write pages)
_UPGRADE_CHUNK_BYTES = 64 << 20
# LMDB errors that mean the files are damaged (others are internal errors)
_DAMAGE_ERRORS = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadValsizeError,
    lmdb.NotFoundError,  # a sub-database missing from the main tree
)


class _Damaged(Exception):
    """Raised while opening: the shard's files are damaged (the message says how)."""


@dataclass(frozen=True)
class WriteResult:
    written: int  # records stored (new or overwritten)
    unchanged: int  # records already stored with identical bytes
    positions: int  # positions in the batch's records
    written_positions: int = 0  # positions in the records stored by this batch
    written_bytes: int = 0  # bytes of the records stored by this batch


@dataclass(frozen=True)
class Batch:
    """A validated batch for :meth:`Shard.commit` (``headers`` from :meth:`Shard.validate`)."""

    items: list[tuple[int, bytes]]
    headers: list[records.RecordHeader]
    overwrite: bool = False

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data in self.items)


@dataclass
class _Totals:
    """What a write transaction updates: the last key and the meta totals."""

    last: bytes | None
    positions: int
    nbytes: int


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


def check_seq(seq: int) -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise InvalidRequestError(f"seq: expected 0 <= seq <= 2**64 - 2, got {seq}")


class Shard:
    """One shard. Open existing ones with the constructor, new ones with :meth:`create`."""

    def __init__(self, shard_id: int, path: Path, *, initial_map_size: int, max_map_size: int, disk: DiskSpace) -> None:
        self.shard_id = shard_id
        self.path = path
        self.max_map_size = max_map_size
        self.disk = disk
        self.manifest: ShardManifest | None = None
        self.damage: str | None = None  # why the shard's files are damaged; None while intact
        self._corrupt: set[int] = set()  # seqs whose record failed its checksum on read
        self._env: lmdb.Environment | None = None
        self._sealed = False
        self._deleted = False  # set by retire(): every later call is NOT_FOUND
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        try:
            self._open(initial_map_size)
        except (_Damaged, StoreError, ValueError, OSError, lmdb.Error) as exc:  # this shard only: never the store
            self.damage = str(exc) if isinstance(exc, _Damaged) else f"cannot be opened: {exc}"
            log.error("shard %d (%s) is damaged: %s", shard_id, path, self.damage)
            self.close()

    def _open(self, initial_map_size: int) -> None:
        reason = integrity.check_files(self.path)
        if reason is not None:
            raise _Damaged(reason)
        self._env = env = layout.open_env(self.path, map_size=initial_map_size)
        env.reader_check()  # clear slots of readers that died with an earlier process
        if env.info()["map_size"] < initial_map_size:
            env.set_mapsize(initial_map_size)
        self._records = env.open_db(layout.RECORDS_DB, create=False)
        self._meta = env.open_db(layout.META_DB, create=False)
        with env.begin(db=self._meta) as txn:
            raw = txn.get(layout.META_MANIFEST)
            store_format = txn.get(layout.META_FORMAT)
            self._sealed = txn.get(layout.META_SEALED) == b"1"
        if raw is None:
            raise _Damaged("the manifest is missing")
        try:
            self.manifest = ShardManifest.from_json(raw)
        except ValueError as exc:
            raise _Damaged(f"manifest: {exc}") from exc
        if store_format is None:
            self._upgrade()
        elif store_format != str(layout.STORE_FORMAT).encode():
            raise _Damaged(f"store format {store_format!r}: this server reads format {layout.STORE_FORMAT}")
        try:
            with env.begin(db=self._records, buffers=True) as txn:
                reason = integrity.check_tree(txn, self._records)
        except _DAMAGE_ERRORS as exc:
            reason = f"records: {exc}"
        if reason is not None:
            self.damage = reason
            log.error("shard %d is damaged: %s", self.shard_id, reason)

    def _upgrade(self) -> None:
        """Store format 1 → 2: checked keys and enveloped values, in resumable chunks.

        Format 1's 8-byte keys sort just before their format-2 keys, so a chunk starts at the
        first key not yet upgraded and every key from there on is still a format-1 key.
        """
        env = self._require_open()
        log.warning("shard %d: upgrading from store format 1 (binding each record to its seq)", self.shard_id)
        self.disk.check(2 * _UPGRADE_CHUNK_BYTES, f"upgrading shard {self.shard_id} to store format 2")
        while True:
            try:
                with env.begin(write=True) as txn:
                    start = txn.get(layout.META_UPGRADED_THROUGH, db=self._meta) or layout.seek_key(0)
                    cursor = txn.cursor(db=self._records)
                    found = cursor.set_range(start)
                    chunk: list[tuple[bytes, bytes]] = []
                    size = 0
                    while found and size < _UPGRADE_CHUNK_BYTES:
                        chunk.append((cursor.key(), cursor.value()))
                        size += len(chunk[-1][1])
                        found = cursor.next()
                    resume = cursor.key() if found else None
                    for old_key, value in chunk:
                        key = layout.key_of(layout.seq_of(old_key))
                        txn.delete(old_key, db=self._records)
                        txn.put(key, layout.wrap(key, value), db=self._records)
                    if resume is not None:
                        txn.put(layout.META_UPGRADED_THROUGH, resume, db=self._meta)
                    else:
                        txn.delete(layout.META_UPGRADED_THROUGH, db=self._meta)
                        txn.put(layout.META_FORMAT, str(layout.STORE_FORMAT).encode(), db=self._meta)
            except lmdb.MapFullError:
                self._grow(reason="upgrading the store format")
                continue
            if resume is None:
                return

    @classmethod
    def create(
        cls,
        shard_id: int,
        path: Path,
        manifest: ShardManifest,
        *,
        initial_map_size: int,
        max_map_size: int,
        disk: DiskSpace,
    ) -> Shard:
        """Create the shard atomically: built in a temporary directory, then renamed into place."""
        what = f"creating shard {shard_id}"
        disk.check(1 << 20, what)
        tmp = path.with_name(path.name + layout.CREATING_SUFFIX)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            env = layout.open_env(tmp, map_size=initial_map_size)
            try:
                meta = env.open_db(layout.META_DB)
                env.open_db(layout.RECORDS_DB)
                with env.begin(write=True, db=meta) as txn:
                    txn.put(layout.META_MANIFEST, manifest.to_json().encode())
                    txn.put(layout.META_FORMAT, str(layout.STORE_FORMAT).encode())
                    txn.put(layout.META_POSITIONS, layout.U64.pack(0))
                    txn.put(layout.META_BYTES, layout.U64.pack(0))
            finally:
                env.close()
            layout.fsync_dir(tmp)
            os.rename(tmp, path)
            layout.fsync_dir(path.parent)
        except (OSError, lmdb.Error) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk.explain(exc, what, 1 << 20) from exc
        shard = cls(shard_id, path, initial_map_size=initial_map_size, max_map_size=max_map_size, disk=disk)
        if shard.damage is not None:
            raise StoreError(f"{what}: the new shard does not open: {shard.damage}")
        return shard

    @property
    def sealed(self) -> bool:
        return self._sealed

    def close(self) -> None:
        with self._write_lock, self._gate.exclusive():
            if self._env is not None:
                self._env.close()
                self._env = None

    # ----------------------------------------------------------------- state

    @property
    def deleted(self) -> bool:
        return self._deleted

    def retire(self, *, force: bool) -> ShardInfo:
        """Close for good (the step before deleting the files): its info just before.

        Under the write lock, so no write or seal runs meanwhile: a shard sealed by then needs
        ``force`` (else :class:`ShardSealedError`, and nothing changes). Reads and streams inside
        finish the chunk they are in; later calls on this object raise NOT_FOUND.
        """
        with self._write_lock:
            if self._sealed and not force:
                raise ShardSealedError(
                    f"shard {self.shard_id} is sealed: its targets are complete and may be in use; "
                    "deleting it needs force"
                )
            info = self.stats()
            with self._gate.exclusive():
                self._deleted = True
                if self._env is not None:
                    self._env.close()
                    self._env = None
        return info

    def _require_open(self) -> lmdb.Environment:
        if self._deleted:
            raise ShardNotFoundError(f"shard {self.shard_id} was deleted")
        if self._env is None:
            raise ShardDamagedError(f"shard {self.shard_id} is damaged: {self.damage}")
        return self._env

    def require_intact(self) -> None:
        """Raise :class:`ShardDamagedError` if the shard is damaged."""
        if self.damage is not None:
            raise ShardDamagedError(
                f"shard {self.shard_id} is damaged: {self.damage} (it serves intact records by seq and "
                "refuses the rest; `logitcache verify` lists what is damaged)"
            )

    def _damaged(self, reason: str) -> ShardDamagedError:
        """Mark the shard damaged (damage found while serving) and return the error to raise."""
        if self.damage is None:
            self.damage = reason
            log.error("shard %d is damaged: %s", self.shard_id, reason)
        return ShardDamagedError(f"shard {self.shard_id} is damaged: {reason}")

    def _missing(self, seq: int) -> StoreError:
        if self.damage is not None:
            return ShardDamagedError(
                f"seq {seq} is not found in shard {self.shard_id}, which is damaged ({self.damage}): it may be lost"
            )
        return SeqNotFoundError(f"seq {seq} is not in shard {self.shard_id}")

    # ----------------------------------------------------------------- writes

    def validate(self, items: list[tuple[int, bytes]]) -> list[records.RecordHeader]:
        """Full validation of a batch against the record format and the manifest (no lock held)."""
        if self.manifest is None:
            self.require_intact()
        assert self.manifest is not None
        seen: set[int] = set()
        headers = []
        for seq, data in items:
            check_seq(seq)
            if seq in seen:
                raise InvalidRequestError(f"records: seq {seq} appears twice in one batch")
            seen.add(seq)
            try:
                header = records.decode(data).header
                self.manifest.check(header, seq)
            except ManifestMismatchError as exc:
                raise ManifestError(f"record for seq {seq} does not match shard {self.shard_id}: {exc}") from exc
            except records.RecordError as exc:
                raise InvalidRequestError(f"record for seq {seq} is malformed: {exc}") from exc
            headers.append(header)
        return headers

    def write_batch(self, items: list[tuple[int, bytes]], *, overwrite: bool = False) -> WriteResult:
        """Validate and store one batch in its own durable transaction; all of it or none of it."""
        outcome = self.commit([Batch(items, self.validate(items), overwrite)])[0]
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    def commit(self, batches: Sequence[Batch]) -> list[WriteResult | StoreError]:
        """Store validated ``batches`` in one durable transaction; one outcome per batch, in order.

        A batch refused on its own (sealed shard, conflict) is an error in its place and stores
        nothing; what would refuse them all (a damaged shard, a full map or disk) is raised.
        """
        with self._write_lock:
            env = self._require_open()
            self.require_intact()
            nbytes = sum(batch.nbytes for batch in batches)
            self._reserve(nbytes)
            needed = 2 * nbytes + _SLACK
            what = f"shard {self.shard_id}: writing {nbytes} bytes"
            self.disk.check(needed, what)
            while True:
                try:
                    with self._gate.shared():
                        outcomes = self._commit_txn(env, batches)
                    break
                except lmdb.MapFullError:
                    self._grow(reason="the batch did not fit")
                except _DAMAGE_ERRORS as exc:
                    raise self._damaged(f"LMDB: {exc}") from exc
                except lmdb.Error as exc:
                    raise self.disk.explain(exc, what, needed) from exc
        for batch, outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, WriteResult) and outcome.written:
                self._corrupt.difference_update(seq for seq, _ in batch.items)
        return outcomes

    def _commit_txn(self, env: lmdb.Environment, batches: Sequence[Batch]) -> list[WriteResult | StoreError]:
        outcomes: list[WriteResult | StoreError] = []
        with env.begin(write=True, buffers=True) as txn:  # buffers: a stored value is checked before it is read
            cursor = txn.cursor(db=self._records)
            totals = _Totals(
                last=bytes(cursor.key()) if cursor.last() else None,
                positions=self._counter(txn, layout.META_POSITIONS),
                nbytes=self._counter(txn, layout.META_BYTES),
            )
            for batch in batches:
                try:
                    outcomes.append(self._put_batch(txn, batch, totals))
                except ShardDamagedError:
                    raise  # found damaged: the whole transaction is abandoned
                except StoreError as exc:
                    outcomes.append(exc)
            txn.put(layout.META_POSITIONS, layout.U64.pack(max(0, totals.positions)), db=self._meta)
            txn.put(layout.META_BYTES, layout.U64.pack(max(0, totals.nbytes)), db=self._meta)
        return outcomes

    def _put_batch(self, txn: lmdb.Transaction, batch: Batch, totals: _Totals) -> WriteResult:
        """Check one batch inside the transaction, then put it (nothing is put if it is refused)."""
        positions = sum(h.num_positions for h in batch.headers)
        keys = [layout.key_of(seq) for seq, _ in batch.items]
        stored: dict[int, bytes] = {}
        if totals.last is not None and min(keys) <= totals.last:  # none to look up past the last key
            for (seq, _), key in zip(batch.items, keys, strict=True):
                value = txn.get(key, db=self._records)
                if value is not None:
                    try:
                        stored[seq] = bytes(layout.unwrap(key, value))
                    except layout.ValueLengthError:  # a damaged record: only an overwrite can replace it
                        stored[seq] = bytes(memoryview(value)[layout.ENVELOPE_BYTES :][: records.HEADER_SIZE])
                    except layout.UnboundValueError as exc:
                        raise self._damaged(f"records: {exc}") from exc
        changed = [
            (item, header, key)
            for item, header, key in zip(batch.items, batch.headers, keys, strict=True)
            if stored.get(item[0]) != item[1]
        ]
        if not changed:
            return WriteResult(0, len(batch.items), positions)  # a retry of what is stored: a no-op, even sealed
        if self._sealed:
            raise ShardSealedError(f"shard {self.shard_id} is sealed: it accepts no more writes")
        if not batch.overwrite:
            for (seq, _), _, _ in changed:
                if seq in stored:
                    raise RecordConflictError(
                        f"seq {seq} of shard {self.shard_id} is stored with different bytes "
                        "(set overwrite to replace it)"
                    )
        changed_keys = [key for _, _, key in changed]
        # new keys in ascending order past the last stored one: append without searching
        appending = not stored and (totals.last is None or changed_keys[0] > totals.last)
        appending = appending and all(a < b for a, b in itertools.pairwise(changed_keys))
        written_positions = written_bytes = 0
        for (seq, data), header, key in changed:
            old = stored.get(seq)
            if old is not None:
                totals.positions -= records.peek_positions(old)  # even if its checksum fails
                totals.nbytes -= len(old)
            txn.put(key, layout.wrap(key, data), append=appending, db=self._records)
            written_positions += header.num_positions
            written_bytes += len(data)
        totals.positions += written_positions
        totals.nbytes += written_bytes
        if totals.last is None or changed_keys[-1] > totals.last:
            totals.last = max(changed_keys)
        return WriteResult(len(changed), len(batch.items) - len(changed), positions, written_positions, written_bytes)

    def _counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return 0 if raw is None else int(layout.U64.unpack(raw)[0])

    def _reserve(self, nbytes: int) -> None:
        """Grow the map before a write that may not fit (copy-on-write: twice the data, plus slack).

        At the size limit nothing is grown: the write is tried and LMDB decides.
        """
        env = self._require_open()
        info = env.info()
        used = (info["last_pgno"] + 1) * env.stat()["psize"]
        needed = used + 2 * nbytes + _SLACK
        if needed > info["map_size"] and info["map_size"] < self.max_map_size:
            self._grow(minimum=min(needed, self.max_map_size), reason=f"a batch of {nbytes} bytes needs room")

    def _grow(self, *, minimum: int = 0, reason: str) -> None:
        env = self._require_open()
        current = env.info()["map_size"]
        if current >= self.max_map_size:
            raise StoreFullError(
                f"shard {self.shard_id} has no room: {reason}, and its map is at the limit of "
                f"{self.max_map_size} bytes (--max-shard-bytes)"
            )
        new_size = min(self.max_map_size, max(current * 2, minimum))
        with self._gate.exclusive():
            env.set_mapsize(new_size)
        log.info("shard %d: map grown from %d to %d bytes", self.shard_id, current, new_size)

    def seal(self) -> None:
        with self._write_lock:
            env = self._require_open()
            self.require_intact()
            if self._sealed:
                return
            while True:
                try:
                    with self._gate.shared(), env.begin(write=True, db=self._meta) as txn:
                        txn.put(layout.META_SEALED, b"1")
                    break
                except lmdb.MapFullError:
                    self._grow(reason="sealing")
                except lmdb.Error as exc:
                    raise self.disk.explain(exc, f"sealing shard {self.shard_id}") from exc
            self._sealed = True

    # ----------------------------------------------------------------- reads

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction with buffers; LMDB errors that mean damage mark the shard damaged."""
        try:
            with self._gate.shared():  # inside it, the environment stays open (close() and retire() wait)
                env = self._require_open()
                with env.begin(db=self._records, buffers=True) as txn:
                    yield txn
        except _DAMAGE_ERRORS as exc:
            raise self._damaged(f"LMDB: {exc}") from exc

    def _unwrap(self, seq: int, key: bytes, value: bytes | memoryview) -> bytes:
        """The record inside a stored value (a copy); a value bound to another seq is damage of the shard."""
        try:
            return bytes(layout.unwrap(key, value))
        except layout.UnboundValueError as exc:
            raise self._damaged(f"records: {exc}") from exc
        except layout.ValueLengthError as exc:
            self._corrupt.add(seq)
            raise CorruptRecordError(f"seq {seq} of shard {self.shard_id} is corrupted on disk: {exc}") from exc

    def _verified(self, seq: int, data: bytes) -> bytes:
        try:
            records.read_header(data)
        except records.RecordError as exc:
            self._corrupt.add(seq)
            raise CorruptRecordError(f"seq {seq} of shard {self.shard_id} is corrupted on disk: {exc}") from exc
        return data

    def get(self, seq: int) -> bytes:
        """One record, envelope and checksum verified. :class:`SeqNotFoundError` if absent."""
        check_seq(seq)
        key = layout.key_of(seq)
        with self._reading() as txn:
            value = txn.get(key)
            if value is None:
                raise self._missing(seq)
            data = self._unwrap(seq, key, value)
        return self._verified(seq, data)

    def read_seqs(self, seqs: Iterable[int], chunk_bytes: int = 1 << 20) -> Iterator[list[tuple[int, bytes]]]:
        """Records for ``seqs`` in that order, in chunks of about ``chunk_bytes``; NOT_FOUND if one is missing.

        Each chunk is read in its own short transaction (nothing is held between chunks).
        """
        pending = list(seqs)
        for seq in pending:
            check_seq(seq)
        at = 0
        while at < len(pending):
            chunk: list[tuple[int, bytes]] = []
            size = 0
            with self._reading() as txn:
                while at < len(pending):
                    seq = pending[at]
                    key = layout.key_of(seq)
                    value = txn.get(key)
                    if value is None:
                        raise self._missing(seq)
                    if chunk and size + len(value) > chunk_bytes:
                        break  # a chunk never exceeds chunk_bytes, unless one record alone does
                    chunk.append((seq, self._unwrap(seq, key, value)))
                    size += len(value)
                    at += 1
            yield [(seq, self._verified(seq, data)) for seq, data in chunk]

    def read_range(self, start: int, end: int, chunk_bytes: int = 1 << 20) -> Iterator[list[tuple[int, bytes]]]:
        """Records with ``start <= seq < end`` in seq order, in chunks of about ``chunk_bytes``."""
        if not 0 <= start <= MAX_SEQ + 1 or not 0 <= end <= MAX_SEQ + 1:
            raise InvalidRequestError(f"range: expected bounds in [0, 2**64 - 1], got [{start}, {end})")
        self.require_intact()
        next_seq = start
        while next_seq < end:
            chunk: list[tuple[int, bytes]] = []
            size = 0
            with self._reading() as txn:
                cursor = txn.cursor()
                found = cursor.set_range(layout.seek_key(next_seq))
                while found:
                    key = bytes(cursor.key())
                    seq = layout.seq_of(key)
                    if not layout.key_ok(key):
                        raise self._damaged(f"records: a damaged key ({key.hex()}) in a range read from seq {next_seq}")
                    if seq >= end:
                        found = False
                        break
                    if seq < next_seq or (chunk and seq <= chunk[-1][0]):
                        raise self._damaged(f"records: a range read from seq {next_seq} met seq {seq} out of order")
                    value = cursor.value()
                    if chunk and size + len(value) > chunk_bytes:
                        break  # a chunk never exceeds chunk_bytes, unless one record alone does
                    chunk.append((seq, self._unwrap(seq, key, value)))
                    size += len(value)
                    found = cursor.next()
            if not chunk:
                return
            next_seq = chunk[-1][0] + 1
            yield [(seq, self._verified(seq, data)) for seq, data in chunk]
            if not found:
                return

    def seqs_page(self, start: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ``(seq, positions)`` pairs with ``seq >= start``, in order."""
        self.require_intact()
        out: list[tuple[int, int]] = []
        with self._reading() as txn:
            cursor = txn.cursor()
            found = cursor.set_range(layout.seek_key(start))
            while found and len(out) < limit:
                key = bytes(cursor.key())
                try:
                    positions = records.read_header(layout.unwrap(key, cursor.value())).num_positions
                except (layout.UnboundValueError, layout.ValueLengthError, records.RecordError):
                    positions = -1  # damaged: reading it says how
                out.append((layout.seq_of(key), positions))
                found = cursor.next()
        return out

    def seq_runs(self, chunk: int = 1 << 16) -> Iterator[list[tuple[int, int]]]:
        """The stored seqs as maximal ``[start, end)`` runs of consecutive seqs, ascending, ``chunk`` runs at a time.

        A key-only cursor scan; each chunk is read in its own short transaction (nothing is held
        while the caller consumes a chunk), so a shard written meanwhile may show later writes.
        """
        self.require_intact()
        next_seq = 0
        while True:
            runs: list[tuple[int, int]] = []
            start = end = -1
            resume: int | None = None
            with self._reading() as txn:
                cursor = txn.cursor()
                if cursor.set_range(layout.seek_key(next_seq)):
                    for key in cursor.iternext(keys=True, values=False):
                        if not layout.key_ok(key):
                            raise self._damaged(f"records: a damaged key ({bytes(key).hex()}) after seq {end - 1}")
                        seq = layout.seq_of(key)
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

    def stats(self) -> ShardInfo:
        if self._deleted:
            raise ShardNotFoundError(f"shard {self.shard_id} was deleted")
        info = ShardInfo(
            shard=self.shard_id,
            manifest=self.manifest,
            sealed=self._sealed,
            sequences=0,
            positions=0,
            record_bytes=0,
            disk_bytes=0,
            first_seq=None,
            last_seq=None,
            map_size=0,
            damage=self.damage,
            damaged_records=len(self._corrupt),
        )
        try:
            with self._gate.shared():  # inside it, the environment stays open
                env = self._env
                if env is None:
                    return info
                with env.begin(buffers=True) as txn:
                    cursor = txn.cursor(db=self._records)
                    first = layout.seq_of(cursor.key()) if cursor.first() else None
                    last = layout.seq_of(cursor.key()) if cursor.last() else None
                    info = dataclasses.replace(
                        info,
                        sequences=txn.stat(self._records)["entries"],
                        positions=self._counter(txn, layout.META_POSITIONS),
                        record_bytes=self._counter(txn, layout.META_BYTES),
                        first_seq=first,
                        last_seq=last,
                        map_size=env.info()["map_size"],
                    )
        except _DAMAGE_ERRORS as exc:
            self._damaged(f"LMDB: {exc}")
            info = dataclasses.replace(info, damage=self.damage)
        data_file = self.path / "data.mdb"
        disk = data_file.stat().st_blocks * 512 if data_file.exists() else 0
        return dataclasses.replace(info, disk_bytes=disk)
