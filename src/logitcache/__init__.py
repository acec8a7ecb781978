"""logitcache: a cache service for the sparse teacher distributions of offline knowledge distillation.

The core, importable without any service layer:

* :mod:`logitcache.sampling` — turn teacher logits into sparse targets (random sampling, top-k);
* :mod:`logitcache.records` — the packed sequence record: encode / decode / validate.
"""

__version__ = "0.1.0"
