"""Status codes become typed client exceptions."""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from logitcache.client import CacheClient, errors


class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """The shape of what grpc raises: code() and details()."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.DATA_LOSS, errors.DataLossError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.INTERNAL, errors.CacheError),
    ],
)
def test_each_code_has_its_exception(code: grpc.StatusCode, cls: type[errors.CacheError]) -> None:
    error = errors.from_rpc_error(_FakeRpcError(code, "what went wrong"))
    assert type(error) is cls
    assert error.code == code
    assert str(error) == f"{code.name}: what went wrong"


def test_invalid_argument_is_a_value_error_and_not_found_a_key_error() -> None:
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.NotFoundError, KeyError)


@contextlib.contextmanager
def _misbehaving_server(read: Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]) -> Iterator[int]:
    """A real gRPC server on port 0 that holds shard 3 and answers ``Read`` with ``read``; its port."""
    from logitcache.proto.v1 import cache_pb2 as pb

    def list_shards(request: bytes, context: grpc.ServicerContext) -> bytes:
        response: bytes = pb.ListShardsResponse(shards=[pb.ShardInfo(shard=3)]).SerializeToString()
        return response

    handlers = {
        "ListShards": grpc.unary_unary_rpc_method_handler(list_shards),
        "Read": grpc.unary_stream_rpc_method_handler(read),
    }
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("logitcache.v1.LogitCache", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def test_a_read_response_that_does_not_parse_is_data_loss_and_not_retried() -> None:
    reads = []

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        reads.append(request)
        yield b"\x0a\x05\x08\x01"  # a record that claims 5 bytes and has 2

    with (
        _misbehaving_server(read) as port,
        CacheClient(f"127.0.0.1:{port}", retries=3) as client,
        pytest.raises(errors.DataLossError, match="read: shard 3: ReadResponse: a record runs past"),
    ):
        list(client.read(3, seqs=[1]))
    assert len(reads) == 1


def test_a_read_stream_that_never_answers_is_given_up_and_retried() -> None:
    """A ``Read`` that accepts the call and sends nothing (what a server that is stopping may do to a
    stream it accepted): the client gives up after ``timeout`` of silence instead of waiting
    forever, retries, and raises DEADLINE_EXCEEDED naming the server."""
    release, calls = threading.Event(), []

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        calls.append(request)
        release.wait()
        yield from ()

    try:
        with (
            _misbehaving_server(read) as port,
            CacheClient(f"127.0.0.1:{port}", timeout=1.0, retries=2, backoff=0.01) as client,
            pytest.raises(errors.DeadlineExceededError, match=rf"shard 3: 127.0.0.1:{port} sent nothing for 1.0 s"),
        ):
            list(client.read(3, seqs=[1]))
        assert len(calls) == 3  # the first try and two retries
    finally:
        release.set()


@pytest.mark.parametrize("cls", [errors.CacheError, *errors.CacheError.__subclasses__()])
def test_errors_pickle_as_themselves(cls: type[errors.CacheError]) -> None:
    """A worker process or a Ray actor hands its error to the caller pickled."""
    error = cls(grpc.StatusCode.UNAVAILABLE, "server 10.0.0.1:50051 is gone", 0.25)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.code, copy.details, copy.retry_after, str(copy)) == (error.code, error.details, 0.25, str(error))
