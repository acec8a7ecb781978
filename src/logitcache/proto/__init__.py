"""Generated gRPC and protobuf stubs (``make proto`` regenerates them from ``proto/``; do not edit)."""
