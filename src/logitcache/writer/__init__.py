"""Teacher side: sample, pack and send targets to the cache (CacheWriter, the teacher CLI)."""

from logitcache.writer.cache_writer import CacheWriter, WriterClosedError, WriterStats

__all__ = ["CacheWriter", "WriterClosedError", "WriterStats"]
