"""A real S3 endpoint for the export tests: moto's server on a loopback port of its own choosing.

moto is the S3-compatible server that installs from PyPI here (MinIO ships as a Go binary from its
own site, which this network does not reach); it speaks the S3 REST protocol over HTTP, so s3fs,
botocore and ``datasets`` talk to it exactly as to AWS.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the S3 endpoint")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> tuple[str, dict[str, Any]]:
    """``(s3://bucket, storage_options)``: a new empty bucket on the endpoint."""
    boto3 = pytest.importorskip("boto3")
    name = f"exports-{next(_buckets)}"
    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, **keys).create_bucket(Bucket=name)
    client_kwargs = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    options = {"key": "test", "secret": "test", "client_kwargs": client_kwargs}
    return f"s3://{name}", options
