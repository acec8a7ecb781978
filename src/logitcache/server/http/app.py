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

Token strings come from the tokenizers :func:`load_tokenizers` finds (files, or directories of
``tokenizer.json`` files one level deep); per shard the one whose fingerprint the manifest records
decodes (:func:`~logitcache.server.http.deps.choose_tokenizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from logitcache import __version__
from logitcache.extras import require
from logitcache.server.errors import StoreError
from logitcache.server.http import schemas
from logitcache.server.http.deps import LoadedTokenizer, require_token
from logitcache.server.http.routes import admin, metrics_router, ops, server_router, shards
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = ["create_app", "load_tokenizer", "load_tokenizers"]

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


def load_tokenizer(path: Path) -> Any:
    """A Hugging Face ``tokenizers.Tokenizer`` from a ``tokenizer.json``.

    Raises ``ValueError`` naming the file when it is missing or does not load.
    """
    require("tokenizers", extra="tokenizer", by="--tokenizer (token strings in the REST API and viewer)")
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ValueError(f"tokenizer: expected a tokenizer.json file, got {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions on bad JSON
        raise ValueError(f"tokenizer: {path} does not load as a Hugging Face tokenizer.json: {exc}") from exc


def _tokenizer_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"tokenizer: expected a tokenizer.json file or a directory holding them, got {path}")
    found = sorted({*path.glob("tokenizer.json"), *path.glob("*/tokenizer.json")})
    if not found:
        raise ValueError(f"tokenizer: no tokenizer.json in {path} or its subdirectories (one level deep)")
    return found


def load_tokenizers(paths: Sequence[Path]) -> list[LoadedTokenizer]:
    """Every tokenizer named by ``paths`` (files, or directories: their ``tokenizer.json`` and ``*/tokenizer.json``).

    A tokenizer found twice (the same fingerprint) is kept once, under its first name. Raises
    ``ValueError`` for a path that is neither, a directory holding none, or a file that does not load.
    """
    loaded: list[LoadedTokenizer] = []
    for path in paths:
        for file in _tokenizer_files(path):
            entry = LoadedTokenizer.of(load_tokenizer(file), f"{file.parent.name}/{file.name}")
            same = next((t for t in loaded if t.fingerprint == entry.fingerprint), None)
            if same is not None:
                log.info("tokenizer %s: the same as %s (%s)", file, same.name, same.fingerprint)
                continue
            log.info("tokenizer %s: %s", file, entry.fingerprint)
            loaded.append(entry)
    return loaded


def create_app(
    store: Store,
    stats: ServerStats,
    *,
    auth_token: str | None = None,
    reads_need_token: bool = False,
    tokenizers: Sequence[LoadedTokenizer] = (),
    grpc_address: str | None = None,
) -> FastAPI:
    """The REST app. ``tokenizers`` decode token strings per shard; ``grpc_address`` is shown on the first-run page."""
    app = FastAPI(
        title="logitcache",
        version=__version__,
        summary="Inspect the sparse teacher distributions a logitcache server stores.",
    )
    app.state.store = store
    app.state.stats = stats
    app.state.auth_token = auth_token
    app.state.reads_need_token = reads_need_token
    app.state.tokenizers = list(tokenizers)
    app.state.grpc_address = grpc_address
    unauthorized: dict[int | str, dict[str, Any]] = {401: {"model": schemas.ErrorBody, "description": "no valid token"}}
    token = [Depends(require_token)]
    app.include_router(ops)
    for router, guarded in (
        (metrics_router, reads_need_token),
        (server_router, reads_need_token),
        (shards, reads_need_token),
    ):
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
