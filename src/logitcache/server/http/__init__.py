"""The REST inspection API, Prometheus metrics and the web viewer (FastAPI), served by ``logitcache serve``.

* :mod:`.app` — :func:`create_app`: the application, error handlers, static viewer;
* :mod:`.deps` — dependencies: the store, the tokenizer, auth;
* :mod:`.schemas` — response models (with examples, for the OpenAPI docs at ``/docs``);
* :mod:`.routes` — the endpoints.
"""
