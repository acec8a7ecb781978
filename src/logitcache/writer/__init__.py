"""Teacher side: sample, pack and send targets to the cache (CacheWriter, the teacher CLI)."""

import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
from logitcache.writer.cache_writer import CacheWriter, WriterClosedError, WriterStats, sequence_seed

__all__ = ["CacheWriter", "WriterClosedError", "WriterStats", "sequence_seed"]
