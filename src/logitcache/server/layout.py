"""A shard's files: one LMDB environment per shard, and what its two sub-databases hold.

::

    <data_dir>/.lock                                  one server per data directory (flock)
    <data_dir>/shards/<shard:010d>/data.mdb, lock.mdb

* ``records`` maps a 12-byte key, the seq (8 bytes big-endian, so cursor order is seq order) and
  a CRC-32 of those 8 bytes, to a value that is the seq's 8 bytes again (the *envelope*) followed
  by one packed sequence record. LMDB pages carry no checksum, so each piece checks itself: a
  damaged key fails its CRC (found by walking the keys alone, without reading a value), a
  value reached through a damaged page pointer names another seq in its envelope, and a damaged
  record fails its own checksum. No seq can be served another seq's record.
* ``meta`` holds the manifest (JSON), the store format, the sealed flag and the totals
  (positions, record bytes), updated in the same transaction as the records they count.

Store format 2 is the one above; format 1 (logitcache 0.1: 8-byte keys, bare records) is
upgraded in place when a shard opens (:class:`~logitcache.server.shard.Shard`).

Environments are opened with ``sync=True, metasync=True``: a commit returns after LMDB flushed
it to disk. ``lock.mdb`` is allocated on disk before LMDB maps it: LMDB extends it sparsely and
writes it through the map, and on a full tmpfs touching an unallocated page of a mapping is a
SIGBUS that no code can catch.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import zlib
from pathlib import Path
from typing import IO

import lmdb

from logitcache.core import records
from logitcache.server.errors import StoreError

__all__ = [
    "ENVELOPE_BYTES",
    "KEY_BYTES",
    "MAX_READERS",
    "MAX_SHARD_ID",
    "META_BYTES",
    "META_DB",
    "META_FORMAT",
    "META_MANIFEST",
    "META_POSITIONS",
    "META_SEALED",
    "META_UPGRADED_THROUGH",
    "RECORDS_DB",
    "STORE_FORMAT",
    "U64",
    "UnboundValueError",
    "ValueLengthError",
    "fsync_dir",
    "key_of",
    "key_ok",
    "lock_data_dir",
    "open_env",
    "seek_key",
    "seq_of",
    "shard_dir",
    "shard_id_of",
    "unwrap",
    "wrap",
]

MAX_SHARD_ID = 2**32 - 1
STORE_FORMAT = 2
RECORDS_DB = b"records"
META_DB = b"meta"
META_MANIFEST = b"manifest"
META_FORMAT = b"format"  # absent: format 1
META_SEALED = b"sealed"
META_POSITIONS = b"positions"
META_BYTES = b"record_bytes"
META_UPGRADED_THROUGH = b"upgraded_through"  # during an upgrade from format 1: the next seq to rewrite
U64 = struct.Struct("<Q")
_SEQ = struct.Struct(">Q")
_CHECK = struct.Struct(">I")
ENVELOPE_BYTES = _SEQ.size
KEY_BYTES = _SEQ.size + _CHECK.size
MAX_READERS = 1024
# LMDB's lock file: a 192-byte header and 64 bytes per reader slot (its MDB_txninfo), rounded up
_LOCK_FILE_BYTES = 192 + 64 * MAX_READERS + 4096


_SHARD_DIR = re.compile(r"[0-9]{10}")


def shard_dir(data_dir: Path, shard_id: int) -> Path:
    """Where a shard lives: named from its number alone, so no request can reach outside ``data_dir``."""
    return data_dir / "shards" / f"{shard_id:010d}"


# suffixes of a shard directory's name while it is being made or removed (a start clears leftovers)
CREATING_SUFFIX = ".creating"
DELETING_SUFFIX = ".deleting"


def shard_id_of(entry: Path) -> int | None:
    """The shard a directory entry under ``shards/`` holds, or None if it is not a shard directory."""
    if entry.is_dir() and _SHARD_DIR.fullmatch(entry.name) and int(entry.name) <= MAX_SHARD_ID:
        return int(entry.name)
    return None


def key_of(seq: int) -> bytes:
    """The record key of ``seq``: the seq, big-endian, then a CRC-32 of it."""
    prefix = _SEQ.pack(seq)
    return prefix + _CHECK.pack(zlib.crc32(prefix))


def seek_key(seq: int) -> bytes:
    """A key that sorts before ``seq``'s and after every smaller seq's (``set_range`` from ``seq``)."""
    return _SEQ.pack(seq)


def seq_of(key: bytes | memoryview) -> int:
    """The seq a key names (its CRC unchecked: see :func:`key_ok`)."""
    return int(_SEQ.unpack_from(key)[0])


def key_ok(key: bytes | memoryview) -> bool:
    """Whether ``key`` is a well-formed record key (length and CRC)."""
    return len(key) == KEY_BYTES and bytes(key) == key_of(seq_of(key))


def wrap(key: bytes, record: bytes) -> bytes:
    """The stored value: the envelope (the key's seq), then the record."""
    return key[:ENVELOPE_BYTES] + record


class UnboundValueError(Exception):
    """A stored value's envelope names another seq: the tree is damaged (a key, or a page pointer)."""


class ValueLengthError(Exception):
    """A stored value's length is not the one its record declares: that record is damaged."""


def unwrap(key: bytes, value: bytes | memoryview) -> memoryview:
    """The record inside the stored ``value`` of ``key``, checked without reading past its first bytes.

    Raises :class:`UnboundValueError` or :class:`ValueLengthError`. The length is checked before
    anything reads the record: a damaged length in LMDB's node would send a read past the data,
    out of the file (SIGBUS), and LMDB does not check it.
    """
    view = memoryview(value)
    if len(view) < ENVELOPE_BYTES or view[:ENVELOPE_BYTES] != key[:ENVELOPE_BYTES]:
        raise UnboundValueError(f"the value under seq {seq_of(key)} is bound to another seq")
    record = view[ENVELOPE_BYTES:]
    declared = records.declared_size(record)
    if declared != len(record):
        raise ValueLengthError(f"the record of seq {seq_of(key)} is {len(record)} bytes, its header says {declared}")
    return record


def open_env(path: Path, *, map_size: int, readonly: bool = False) -> lmdb.Environment:
    """A shard's environment with the store's options; ``OSError`` (ENOSPC) if its lock file cannot be allocated."""
    if not readonly:
        fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, _LOCK_FILE_BYTES)
        finally:
            os.close(fd)
    return lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=4,
        max_readers=MAX_READERS,
        sync=True,
        metasync=True,
        readahead=False,
        readonly=readonly,
        create=not readonly,
    )


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take ``data_dir`` for this process (its ``.lock`` file, held until closed), or raise.

    One server per data directory: LMDB map resizes and the sealed flag are per process; and
    ``logitcache verify`` reads the files as they rest, which a running server would change.
    """
    lock = open(data_dir / ".lock", "a+")  # noqa: SIM115 - the caller holds it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise StoreError(f"{data_dir} is in use by another logitcache server (or verify)") from exc
    return lock
