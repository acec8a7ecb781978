"""The REST application: :func:`create_app` over the same store the gRPC service uses.

Reads go through the store's short read transactions, so they never block writers. Errors are
JSON ``{"detail": ...}``: 404 for an unknown shard / seq / position, 422 for malformed path or
query parameters (FastAPI's validation), 401 without the token where one is needed, 415 for a
seal without a JSON body, 500 with a ``DATA_LOSS: ...`` message for a damaged record or shard
(counted in the metrics; the server keeps serving); anything unforeseen is a JSON 500. The
bearer scheme is declared in the schema on exactly the endpoints that check it. The web viewer
(``static/``: plain HTML + JS, no build step, no CDN) is at ``/``. The schema is at
``/openapi.json``; FastAPI's docs page at ``/docs`` loads Swagger UI from a CDN, so it needs
network access in the browser.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from logitcache import __version__
from logitcache.extras import require
from logitcache.server.errors import StoreError
from logitcache.server.http import schemas
from logitcache.server.http.deps import require_token
from logitcache.server.http.routes import admin, metrics_router, ops, shards
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["create_app", "load_tokenizer"]

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)
# a store error's gRPC code → the HTTP status REST answers with
HTTP_STATUS = {
    "INVALID_ARGUMENT": 422,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 503,
    "DATA_LOSS": 500,
    "INTERNAL": 500,
}


def load_tokenizer(path: Path | None) -> Any:
    """A Hugging Face ``tokenizers.Tokenizer`` from a ``tokenizer.json``, or None."""
    if path is None:
        return None
    require("tokenizers", extra="tokenizer", by="--tokenizer (token strings in the REST API and viewer)")
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ValueError(f"tokenizer: expected a tokenizer.json file, got {path}")
    return Tokenizer.from_file(str(path))


def create_app(
    store: Store,
    stats: ServerStats,
    *,
    auth_token: str | None = None,
    reads_need_token: bool = False,
    tokenizer: Any = None,
) -> FastAPI:
    app = FastAPI(
        title="logitcache",
        version=__version__,
        summary="Inspect the sparse teacher distributions a logitcache server stores.",
    )
    app.state.store = store
    app.state.stats = stats
    app.state.auth_token = auth_token
    app.state.reads_need_token = reads_need_token
    app.state.tokenizer = tokenizer
    unauthorized: dict[int | str, dict[str, Any]] = {401: {"model": schemas.ErrorBody, "description": "no valid token"}}
    token = [Depends(require_token)]
    app.include_router(ops)
    for router, guarded in ((metrics_router, reads_need_token), (shards, reads_need_token)):
        app.include_router(router, dependencies=token if guarded else [], responses=unauthorized if guarded else {})
    writes_guarded = auth_token is not None
    app.include_router(
        admin, dependencies=token if writes_guarded else [], responses=unauthorized if writes_guarded else {}
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        stats.error(exc.code)
        status = HTTP_STATUS.get(exc.code, 500)
        detail = f"{exc.code}: {exc}" if status >= 500 else str(exc)
        headers = {} if exc.retry_after is None else {"Retry-After": str(max(1, round(exc.retry_after)))}
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # anything unforeseen still answers JSON, and is counted like gRPC's INTERNAL
        stats.error("INTERNAL")
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"INTERNAL: {type(exc).__name__}: {exc}"}, status_code=500)

    return app
