"""logitcache: a cache service for the sparse teacher distributions of offline knowledge distillation.

The layers, each importing only from those above it:

* :mod:`logitcache.core` — numpy only: the packed record, the manifest, the sampler configuration;
* :mod:`logitcache.chunks` — plain Python: the default chunk size of the torch side's passes over ``[positions, V]``;
* :mod:`logitcache.wire` and :mod:`logitcache.client` — the protocol and the thin, typed client;
* :mod:`logitcache.server` — the cache server (no torch);
* :mod:`logitcache.targets`, :mod:`logitcache.kd`, :mod:`logitcache.writer`, :mod:`logitcache.training`
  — torch: samplers and sparse targets, the sparse-KD loss, the teacher-side writer, the loader;
* :mod:`logitcache.apps` — the ``logitcache`` command, its demo and teacher;
* :mod:`logitcache.testing` — real servers and load for tests and benchmarks.
"""

__version__ = "0.1.0"
