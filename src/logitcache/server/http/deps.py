"""FastAPI dependencies: the store, the optional tokenizer, and the auth checks."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status

from logitcache.server.stats import ServerStats
from logitcache.server.store import Shard, Store, StoreError

__all__ = ["ShardId", "get_shard", "get_stats", "get_store", "get_tokenizer", "require_read_access", "require_token"]


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_stats(request: Request) -> ServerStats:
    stats: ServerStats = request.app.state.stats
    return stats


def get_tokenizer(request: Request) -> Any:
    return request.app.state.tokenizer


def _token_ok(request: Request) -> bool:
    token: str | None = request.app.state.auth_token
    if token is None:
        return True
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def require_token(request: Request) -> None:
    """Mutating endpoints: the server's auth token, when it has one."""
    if not _token_ok(request):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authorization: expected 'Bearer <token>' with the server's token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_read_access(request: Request) -> None:
    """Read endpoints: open, unless the server was started with http_reads_need_token."""
    if request.app.state.reads_need_token:
        require_token(request)


ShardId = Annotated[int, Path(ge=0, le=2**32 - 1, description="shard number")]


def get_shard(shard: ShardId, store: Annotated[Store, Depends(get_store)]) -> Shard:
    try:
        return store.get(shard)
    except StoreError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
