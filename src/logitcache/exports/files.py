"""Sealed shards to and from parquet files, in a local directory or an object store (fsspec URLs).

An export of shard ``h`` under ``DEST`` is one folder::

    DEST/shard-0000000003/part-00000.parquet    rows_per_file sequences each, in seq order
                          part-00001.parquet    (row groups of ROW_GROUP_ROWS rows, zstd, no dictionaries)
                          _export.json          written last: the manifest, the counts, the parts

``DEST`` is anything fsspec opens: a path, ``file://``, ``s3://bucket/prefix`` (``logitcache[s3]``:
s3fs; credentials and ``AWS_ENDPOINT_URL`` from the environment as boto reads them, or
``storage_options``), ``gs://``, ``hf://``. Parquet objects appear whole (a PUT is atomic) and the
folder counts as an export only once ``_export.json`` exists, so a reader never sees half of one and
an interrupted export is simply rerun. Only sealed shards are exported: an open one may still change.

:func:`import_shard` re-encodes every row (:mod:`.columns`) and refuses a row whose bytes would
differ from the exported record's checksum, before sending it; the shard is created with the
exported manifest, written, checked complete and sealed. Any failure deletes a shard the call
created, so a failed import into a new shard leaves nothing behind; into a shard that already
existed open (a failed run's, say) it leaves what it wrote, and a rerun resumes (identical records
are stored once). A record's checksum does not cover its seq: each part's seqs are checked against
a digest in ``_export.json``. Importing into a server that holds the same sealed
shard already is a no-op.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from logitcache.extras import require

require("fsspec", extra="export", by="logitcache.exports")

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import xxhash  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from logitcache.client import AlreadyExistsError, CacheClient, NotFoundError  # noqa: E402
from logitcache.core.manifest import ShardInfo, ShardManifest  # noqa: E402
from logitcache.exports.columns import (  # noqa: E402
    FORMAT,
    ExportDataError,
    manifest_of,
    records_from_batch,
    schema_with,
    to_batch,
)

__all__ = [
    "MARKER",
    "ROW_GROUP_ROWS",
    "ExportSummary",
    "ImportSummary",
    "export_shard",
    "exported_folders",
    "import_shard",
    "part_files",
    "read_marker",
]

MARKER = "_export.json"
ROW_GROUP_ROWS = 128  # sequences per parquet row group: what a streaming reader fetches at a time
DEFAULT_ROWS_PER_FILE = 1024


@dataclass(frozen=True)
class ExportSummary:
    shard: int
    folder: str  # the export's URL
    sequences: int
    positions: int
    files: int
    bytes: int  # parquet bytes written
    record_bytes: int  # the shard's record bytes


@dataclass(frozen=True)
class ImportSummary:
    shard: int
    source: str
    sequences: int
    written: int  # newly stored
    unchanged: int  # already stored with identical bytes (a resumed import)
    positions: int


def _fs(url: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # fsspec names the package; say which extra has it
        raise ImportError(f"{url}: {exc} (for s3:// URLs: pip install 'logitcache[s3]')") from None
    return fs, path.rstrip("/")


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A local path as a path (what pyarrow and people expect), anything else as its URL."""
    return path if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(path))


def export_shard(
    client: CacheClient,
    shard: int,
    dest: str,
    *,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    storage_options: dict[str, Any] | None = None,
) -> ExportSummary:
    """Write sealed ``shard`` as parquet under ``dest`` (see the module docstring).

    Refused: an unsealed shard (``ValueError``), an existing export of it under ``dest``
    (``FileExistsError``), a record that could not be imported back identically (``ExportDataError``).
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file: expected >= 1, got {rows_per_file}")
    info = client.get_shard(shard)
    if not info.sealed or info.manifest is None:
        raise ValueError(f"shard {shard} is not sealed: only sealed shards are exported (`logitcache shards seal`)")
    manifest = info.manifest
    fs, root = _fs(dest, storage_options)
    folder = posixpath.join(root, f"shard-{shard:010d}")
    if fs.exists(posixpath.join(folder, MARKER)):
        raise FileExistsError(
            f"{_url(fs, folder)} already holds an export of shard {shard}: remove it or export elsewhere"
        )
    fs.makedirs(folder, exist_ok=True)
    records = client.read_views(shard, ranges=client.seq_runs(shard))
    parts: list[dict[str, Any]] = []
    written = sequences = positions = 0
    pending: list[tuple[int, memoryview]] = []
    done = False
    while not done:
        name = f"part-{len(parts):05d}.parquet"
        rows = 0
        seqs = xxhash.xxh3_64()
        first = last = None
        with (
            fs.open(posixpath.join(folder, name), "wb") as f,
            pq.ParquetWriter(f, schema_with(manifest), compression="zstd", use_dictionary=False) as writer,
        ):
            while rows < rows_per_file:
                pending = list(itertools.islice(records, min(ROW_GROUP_ROWS, rows_per_file - rows)))
                if not pending:
                    done = True
                    break
                batch = to_batch(shard, pending, manifest)
                writer.write_batch(batch)
                seqs.update(np.array([seq for seq, _ in pending], dtype="<u8").tobytes())
                rows += len(pending)
                positions += int(pc.sum(pc.list_value_length(batch.column("input_ids"))).as_py())
                first = pending[0][0] if first is None else first
                last = pending[-1][0]
        if rows == 0:
            fs.rm(posixpath.join(folder, name))
            break
        parts.append({"file": name, "rows": rows, "first_seq": first, "last_seq": last, "seqs": seqs.hexdigest()})
        sequences += rows
        written += int(fs.size(posixpath.join(folder, name)))
    if sequences != info.sequences:  # sealed: nothing may change; a server that lost records must not pass
        raise ExportDataError(f"shard {shard}: read {sequences} records, the shard says it holds {info.sequences}")
    listed = {posixpath.join(folder, part["file"]) for part in parts}
    for stale in fs.glob(posixpath.join(folder, "part-*.parquet")):  # an interrupted export's, of other sizes
        if posixpath.normpath(stale) not in {posixpath.normpath(p) for p in listed}:
            fs.rm(stale)
    marker = {
        "format": FORMAT,
        "shard": shard,
        "manifest": json.loads(manifest.to_json()),
        "sequences": sequences,
        "positions": positions,
        "record_bytes": info.record_bytes,
        "parts": parts,
    }
    with fs.open(posixpath.join(folder, MARKER), "w") as f:
        f.write(json.dumps(marker, indent=1))
    return ExportSummary(shard, _url(fs, folder), sequences, positions, len(parts), written, info.record_bytes)


def exported_folders(source: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The complete shard exports at ``source``: the folder itself, or every ``shard-*`` folder in it
    (in shard order). ``FileNotFoundError`` if there are none."""
    fs, path = _fs(source, storage_options)
    if fs.exists(posixpath.join(path, MARKER)):
        return [_url(fs, path)]
    found = sorted(fs.glob(posixpath.join(path, "shard-*", MARKER)))
    if not found:
        raise FileNotFoundError(
            f"{source}: no complete shard export (no {MARKER} in it or in a shard-* folder under it; "
            "an interrupted export has none: rerun it)"
        )
    return [_url(fs, posixpath.dirname(marker)) for marker in found]


def read_marker(folder: str, storage_options: dict[str, Any] | None = None) -> tuple[dict[str, Any], ShardManifest]:
    """An export folder's ``_export.json`` and its manifest (``ExportDataError`` if it is not one)."""
    fs, path = _fs(folder, storage_options)
    try:
        with fs.open(posixpath.join(path, MARKER), "r") as f:
            marker = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {MARKER}: not a complete shard export (rerun the export)") from None
    except json.JSONDecodeError as exc:
        raise ExportDataError(f"{folder}/{MARKER}: not JSON: {exc}") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise ExportDataError(f"{folder}/{MARKER}: not a {FORMAT} export")
    try:
        manifest = ShardManifest.from_json(json.dumps(marker["manifest"]))
        for key in ("shard", "sequences", "positions", "record_bytes"):
            if not isinstance(marker[key], int) or marker[key] < 0:
                raise ValueError(f"{key}: expected an integer >= 0, got {marker[key]!r}")
        for part in marker["parts"]:
            if (
                not isinstance(part["file"], str)
                or "/" in part["file"]
                or not all(isinstance(part[key], int) for key in ("rows", "first_seq", "last_seq"))
                or not isinstance(part["seqs"], str)
            ):
                raise ValueError(f"a bad part entry {part}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportDataError(f"{folder}/{MARKER}: {exc}") from None
    return marker, manifest


def part_files(folder: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The parquet files of one complete export, as URLs, in seq order."""
    marker, _ = read_marker(folder, storage_options)
    return [f"{folder.rstrip('/')}/{part['file']}" for part in marker["parts"]]


def _rows(folder: str, storage_options: dict[str, Any] | None) -> Iterator[tuple[str, ShardManifest, Any]]:
    """Each part's record batches, after checking the part's manifest against the marker's."""
    marker, manifest = read_marker(folder, storage_options)
    fs, path = _fs(folder, storage_options)
    for part in marker["parts"]:
        where = f"{folder}/{part['file']}"
        try:
            with fs.open(posixpath.join(path, part["file"]), "rb") as f:
                parquet = pq.ParquetFile(f)
                if manifest_of(parquet.schema_arrow, where) != manifest:
                    raise ExportDataError(f"{where}: its manifest differs from {MARKER}'s")
                if parquet.metadata.num_rows != part["rows"]:
                    raise ExportDataError(f"{where}: {parquet.metadata.num_rows} rows, {MARKER} says {part['rows']}")
                _check_seqs(parquet.read(columns=["seq"]).column("seq"), part, where)
                for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
                    yield where, manifest, batch
        except FileNotFoundError:
            raise ExportDataError(f"{where}: missing ({MARKER} lists it)") from None
        except pa.ArrowException as exc:  # not a parquet file, truncated, a damaged page (the store's own errors pass)
            raise ExportDataError(f"{where}: cannot be read as parquet: {exc}") from None


def _check_seqs(column: Any, part: dict[str, Any], where: str) -> None:
    """A part's seq column as exported: ascending, its first and last and its digest as the marker says
    (a record's checksum does not cover its seq: an edited seq would store a record under another one)."""
    seqs = column.to_numpy(zero_copy_only=False).astype("<u8")
    if (
        xxhash.xxh3_64_hexdigest(seqs.tobytes()) != part["seqs"]
        or (seqs.size and (int(seqs[0]), int(seqs[-1])) != (part["first_seq"], part["last_seq"]))
        or not bool(np.all(seqs[1:] > seqs[:-1]))
    ):
        raise ExportDataError(f"{where}: its seqs are not the exported ones (the file was changed or damaged)")


def import_shard(
    source: str,
    client: CacheClient,
    *,
    shard: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ImportSummary:
    """Load the export folder ``source`` into the cluster as ``shard`` (default: the exported number).

    Refused: a folder that is not a complete export (``FileNotFoundError``), a row that does not
    re-encode byte-identically (``ExportDataError``), a shard that exists with another manifest or
    sealed with other contents (:class:`~logitcache.client.FailedPreconditionError` from the server,
    or ``ValueError``); server errors as :class:`~logitcache.client.CacheError`.
    """
    marker, manifest = read_marker(source, storage_options)
    target = int(marker["shard"]) if shard is None else shard
    existing = _find(client, target)
    if existing is not None and existing.sealed:
        if (
            existing.manifest == manifest
            and existing.sequences == marker["sequences"]
            and (existing.record_bytes == marker["record_bytes"])
        ):
            return ImportSummary(target, source, existing.sequences, 0, existing.sequences, existing.positions)
        raise ValueError(f"shard {target} exists, sealed, with other contents: import as another --shard")
    created = False
    if existing is None:
        try:
            client.create_shard(target, manifest)
            created = True
        except AlreadyExistsError:  # created meanwhile by someone else: never deleted below
            client.create_shard(target, manifest, exist_ok=True)
    else:
        client.create_shard(target, manifest, exist_ok=True)  # the manifests must agree
    written = unchanged = positions = 0
    try:
        for where, _, batch in _rows(source, storage_options):
            items = []
            for exported_shard, seq, data in records_from_batch(batch, manifest, where):
                if exported_shard != marker["shard"]:
                    raise ExportDataError(f"{where}: seq {seq} is of shard {exported_shard}, not {marker['shard']}")
                items.append((seq, data))
            summary = client.write(target, items)
            written, unchanged = written + summary.written, unchanged + summary.unchanged
            positions += summary.positions
        info = client.get_shard(target)
        if info.sequences != marker["sequences"]:
            raise ExportDataError(
                f"{source}: {info.sequences} sequences imported into shard {target}, "
                f"the export has {marker['sequences']}"
            )
        client.seal_shard(target)
    except BaseException:
        if created:
            _delete_quietly(client, target)
        raise
    return ImportSummary(target, source, marker["sequences"], written, unchanged, positions)


def _find(client: CacheClient, shard: int) -> ShardInfo | None:
    try:
        return client.get_shard(shard)
    except NotFoundError:
        return None


def _delete_quietly(client: CacheClient, shard: int) -> None:
    with contextlib.suppress(Exception):  # the original failure is what the caller needs to see
        client.delete_shard(shard)
