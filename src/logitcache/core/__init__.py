"""The core, numpy only (no torch, no service layer): records, manifest, sampler configuration, result types.

* :mod:`.records` — the packed sequence record: encode / decode / validate;
* :mod:`.manifest` — what every record of a shard must agree with;
* :mod:`.config` — target kinds, :class:`~.config.SamplerConfig`, the format's limits;
* :mod:`.results` — what the client's calls answer (acknowledgements, server counters).
"""
