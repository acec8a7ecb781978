"""The cache server: LMDB store (:mod:`.store`), gRPC service (:mod:`.grpc_service`), settings, runner.

``logitcache serve`` (:func:`logitcache.server.runner.serve`) starts it.
"""
