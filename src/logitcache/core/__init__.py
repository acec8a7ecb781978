"""The core, numpy only (no torch, no service layer): the record codec, the manifest, the sampler configuration.

* :mod:`.records` — the packed sequence record: encode / decode / validate;
* :mod:`.manifest` — what every record of a shard must agree with;
* :mod:`.config` — target kinds, :class:`~.config.SamplerConfig`, the format's limits.
"""
