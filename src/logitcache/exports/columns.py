"""Records as Arrow columns and back: the schema of an exported shard's parquet files.

One row per sequence. Each column is a record section as stored, so any engine that reads parquet
(Hugging Face ``datasets``, Ray Data, DuckDB, Spark, pandas) sees the targets without our code,
and :func:`records_from_batch` re-encodes a row into exactly the bytes the server stored::

    column        type            what
    shard         uint32          the shard the record was exported from
    seq           uint64          the record's seq
    input_ids     list<int32>     [T] the token at each position
    entry_counts  list<uint16>    [T] entries at each position (>= 1)
    token_ids     list<int32>     [E] entry token ids, grouped by position (position 0's first)
    values        list<uint32>    [E] sampled: how many of the N draws hit the token (target = value / N);
                                  top-k: the ratio quantiser's level (see logitcache.core.records)
    weights       list<float32>   [E] importance weights p/q of a WEIGHTED record, else null
    value_bits    uint8           the record's value width (top-k: its quantiser's precision)
    dense         bool            the record was stored in the zstd DENSE layout
    checksum      uint64          the stored record's XXH3-64 (its header's last 8 bytes)

The shard's :class:`~logitcache.core.manifest.ShardManifest` is in each file's schema metadata
under :data:`MANIFEST_KEY` (JSON); it supplies what every record of the shard shares (method,
vocabulary, rounds or k, temperature or top-p). A re-encoded row whose checksum differs from
``checksum`` is refused (:class:`ExportDataError`): nothing is imported that is not byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from logitcache.extras import require

require("pyarrow", extra="export", by="logitcache.exports")

import pyarrow as pa  # noqa: E402

from logitcache.core import records  # noqa: E402
from logitcache.core.manifest import ShardManifest  # noqa: E402

__all__ = ["FORMAT", "FORMAT_KEY", "MANIFEST_KEY", "SCHEMA", "ExportDataError", "records_from_batch", "to_batch"]

FORMAT = "logitcache-parquet-1"
FORMAT_KEY = b"logitcache.format"
MANIFEST_KEY = b"logitcache.manifest"

SCHEMA = pa.schema(
    [
        ("shard", pa.uint32()),
        ("seq", pa.uint64()),
        ("input_ids", pa.list_(pa.int32())),
        ("entry_counts", pa.list_(pa.uint16())),
        ("token_ids", pa.list_(pa.int32())),
        ("values", pa.list_(pa.uint32())),
        ("weights", pa.list_(pa.float32())),
        ("value_bits", pa.uint8()),
        ("dense", pa.bool_()),
        ("checksum", pa.uint64()),
    ]
)


class ExportDataError(ValueError):
    """An exported file that is not what :func:`to_batch` wrote: a missing column, another schema or
    manifest, or a row that does not re-encode to its record's checksum."""


def schema_with(manifest: ShardManifest) -> pa.Schema:
    """:data:`SCHEMA` carrying ``manifest`` in its metadata."""
    return SCHEMA.with_metadata({FORMAT_KEY: FORMAT.encode(), MANIFEST_KEY: manifest.to_json().encode()})


def manifest_of(schema: pa.Schema, where: str) -> ShardManifest:
    """The manifest in a file's schema metadata; :class:`ExportDataError` if it is not one of ours."""
    meta = schema.metadata or {}
    if meta.get(FORMAT_KEY) != FORMAT.encode():
        raise ExportDataError(f"{where}: not a logitcache export (schema metadata {FORMAT_KEY.decode()} != {FORMAT})")
    missing = [name for name in SCHEMA.names if name not in schema.names]
    if missing:
        raise ExportDataError(f"{where}: columns {missing} are missing")
    try:
        return ShardManifest.from_json(meta[MANIFEST_KEY])
    except (KeyError, ValueError) as exc:
        raise ExportDataError(f"{where}: the manifest in the schema metadata cannot be read: {exc}") from None


def to_batch(shard: int, items: Sequence[tuple[int, bytes | memoryview]], manifest: ShardManifest) -> pa.RecordBatch:
    """One row per ``(seq, record)``; each record decoded and validated (:class:`~logitcache.core.records.RecordError`)
    and checked to re-encode to its own bytes (a DENSE record compressed at another zstd level does not:
    :class:`ExportDataError`, since it could not be imported back identically)."""
    parts: dict[str, list[npt.NDArray[np.generic]]] = {
        n: [] for n in ("input_ids", "entry_counts", "token_ids", "values")
    }
    weights: list[npt.NDArray[np.float32] | None] = []
    value_bits, dense, checksums = [], [], []
    for seq, data in items:
        header, (input_ids, entry_counts, token_ids, values, w) = records.decode_sections(data)
        manifest.check(header, seq)
        if records.encode_sections(header, input_ids, entry_counts, token_ids, values, w) != data:
            raise ExportDataError(
                f"shard {shard} seq {seq}: the record does not re-encode to its own bytes (a DENSE record "
                "written with another zstd level?), so an import could not restore it exactly"
            )
        for name, array in zip(parts, (input_ids, entry_counts, token_ids, values), strict=True):
            parts[name].append(array)
        weights.append(w)
        value_bits.append(header.value_bits)
        dense.append(header.dense)
        checksums.append(header.checksum)
    types: dict[str, type[np.generic]] = {
        "input_ids": np.int32,
        "entry_counts": np.uint16,
        "token_ids": np.int32,
        "values": np.uint32,
    }
    columns: dict[str, pa.Array] = {
        "shard": pa.array(np.full(len(items), shard, dtype=np.uint32)),
        "seq": pa.array(np.array([seq for seq, _ in items], dtype=np.uint64)),
    }
    for name, arrays in parts.items():
        columns[name] = _lists(arrays, types[name])
    if any(w is not None for w in weights):
        offsets = np.zeros(len(items) + 1, dtype=np.int32)
        np.cumsum([0 if w is None else w.shape[0] for w in weights], out=offsets[1:])
        flat = np.concatenate([w for w in weights if w is not None]).astype(np.float32)
        mask = pa.array([w is None for w in weights])
        columns["weights"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=mask)
    else:
        columns["weights"] = pa.nulls(len(items), pa.list_(pa.float32()))
    columns["value_bits"] = pa.array(np.array(value_bits, dtype=np.uint8))
    columns["dense"] = pa.array(dense, type=pa.bool_())
    columns["checksum"] = pa.array(np.array(checksums, dtype=np.uint64))
    return pa.RecordBatch.from_arrays([columns[n] for n in SCHEMA.names], schema=schema_with(manifest))


def _lists(arrays: list[npt.NDArray[np.generic]], dtype: type[np.generic]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.shape[0] for a in arrays], out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"expected fewer than 2**31 values in one batch of rows, got {offsets[-1]}: export fewer rows")
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))


def records_from_batch(
    batch: pa.RecordBatch | pa.Table, manifest: ShardManifest | Mapping[int, ShardManifest], where: str
) -> Iterator[tuple[int, int, bytes]]:
    """``(shard, seq, record)`` for each row, re-encoded and checked against the row's checksum.

    ``manifest``: the shard's, or each shard's by number (rows of several shards; a row of a shard
    not in it is an :class:`ExportDataError`)."""
    if isinstance(batch, pa.Table):
        for chunk in batch.to_batches():
            yield from records_from_batch(chunk, manifest, where)
        return
    missing = [name for name in SCHEMA.names if name not in batch.schema.names]
    if missing:
        raise ExportDataError(f"{where}: columns {missing} are missing")
    try:
        batch = batch.select(SCHEMA.names).cast(SCHEMA.remove_metadata())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ExportDataError(f"{where}: the columns do not have the export's types: {exc}") from None
    shards = batch.column("shard").to_numpy(zero_copy_only=False)
    seqs = batch.column("seq").to_numpy(zero_copy_only=False)
    lists = {name: _flat(batch.column(name)) for name in ("input_ids", "entry_counts", "token_ids", "values")}
    weights = batch.column("weights")
    w_flat, w_offsets = _flat(weights)
    value_bits = batch.column("value_bits").to_numpy(zero_copy_only=False)
    dense = batch.column("dense").to_numpy(zero_copy_only=False)
    checksums = batch.column("checksum").to_numpy(zero_copy_only=False)
    for row in range(batch.num_rows):
        if isinstance(manifest, Mapping):
            if int(shards[row]) not in manifest:
                raise ExportDataError(f"{where}: seq {int(seqs[row])} is of shard {int(shards[row])}, not one of these")
            of_row = manifest[int(shards[row])]
        else:
            of_row = manifest
        header = _header(of_row, int(value_bits[row]), weighted=weights[row].is_valid, dense=bool(dense[row]))
        ids, counts, tokens, levels = (flat[offsets[row] : offsets[row + 1]] for flat, offsets in lists.values())
        w = w_flat[w_offsets[row] : w_offsets[row + 1]] if weights[row].is_valid else None
        try:
            data = records.encode_sections(header, ids, counts, tokens, levels, w)
        except ValueError as exc:
            raise ExportDataError(f"{where}: seq {int(seqs[row])}: {exc}") from None
        stored = records.read_header(data)
        try:
            of_row.check(stored, int(seqs[row]))  # its length, and the seq within the teacher run's slice
        except ValueError as exc:
            raise ExportDataError(f"{where}: seq {int(seqs[row])}: {exc}") from None
        checksum = stored.checksum
        if checksum != int(checksums[row]):
            raise ExportDataError(
                f"{where}: seq {int(seqs[row])}: the row re-encodes to checksum {checksum:#018x}, "
                f"not the exported record's {int(checksums[row]):#018x} (the file was changed or damaged)"
            )
        yield int(shards[row]), int(seqs[row]), data


def _flat(column: pa.ListArray) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.int32]]:
    """A list column's values and absolute offsets into them (a sliced column's offsets do not start at 0)."""
    return column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy(zero_copy_only=False)


def _header(manifest: ShardManifest, value_bits: int, *, weighted: bool, dense: bool) -> records.RecordHeader:
    """The parameters every record of the shard shares, from its manifest, and the row's own."""
    sampled = manifest.method == "sampled"
    return records.header_for(
        manifest.method,
        manifest.vocab_size,
        manifest.rounds if sampled else manifest.k,
        value_bits=value_bits,
        param=manifest.temperature if sampled else (manifest.top_p or 0.0),
        weighted=weighted,
        dense=dense,
    )
