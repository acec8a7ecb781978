"""Status codes become typed client exceptions."""

from __future__ import annotations

import grpc
import pytest

from logitcache.client import errors


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
