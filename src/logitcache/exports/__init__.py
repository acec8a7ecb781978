"""Sealed shards as parquet for the engines people already run (``logitcache[export]``: pyarrow, fsspec).

* :mod:`.columns` — the parquet schema: one row per sequence, each record section a column, the
  shard's manifest in the file metadata; rows re-encode to exactly the stored bytes.
* :mod:`.files` — ``logitcache export`` / ``import``: a sealed shard to a folder of parquet files in a
  local directory or an object store (fsspec URLs: ``s3://`` with ``logitcache[s3]``) and back.
* :mod:`.reader` — :class:`~logitcache.exports.reader.ExportedShardReader`: training batches
  (:class:`~logitcache.training.SparseKDBatch`) from exported shards, partitioned across ranks and
  resumable, on Hugging Face ``datasets`` streaming (``logitcache[datasets]``).
"""
