"""FastAPI dependencies: the store, the optional tokenizer, and the auth check.

:func:`require_token` is attached by :func:`~logitcache.server.http.app.create_app` only to the
routers that need it (seal when the server has a token; reads and ``/metrics`` too under
``--http-reads-need-token``), so the OpenAPI schema declares the bearer scheme exactly where it
is checked.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from logitcache.server.shard import Shard
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["ShardId", "get_shard", "get_stats", "get_store", "get_tokenizer", "require_json", "require_token"]

bearer = HTTPBearer(auto_error=False, description="the server's auth token (--auth-token)")


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_stats(request: Request) -> ServerStats:
    stats: ServerStats = request.app.state.stats
    return stats


def get_tokenizer(request: Request) -> Any:
    return request.app.state.tokenizer


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> None:
    """``Authorization: Bearer <token>`` with the server's token, else 401."""
    token: str | None = request.app.state.auth_token
    given = credentials.credentials if credentials is not None else ""
    if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authorization: expected 'Bearer <token>' with the server's token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_json(request: Request) -> None:
    """Mutations need a JSON body: a browser cannot send one cross-origin without a CORS preflight, which is refused."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "content-type: expected application/json")


ShardId = Annotated[int, Path(ge=0, le=2**32 - 1, description="shard number")]


def get_shard(shard: ShardId, store: Annotated[Store, Depends(get_store)]) -> Shard:
    return store.get(shard)  # a StoreError answers through the app's handler (404 here)
