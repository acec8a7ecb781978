"""FastAPI dependencies: the store, the tokenizers and which one decodes a shard, and the auth check.

The server may load several tokenizers (``--tokenizer`` repeated, or a directory of them). Each
shard's manifest records the fingerprint of the tokenizer its input ids came from
(:func:`~logitcache.core.tokenizers.tokenizer_fingerprint`); :func:`choose_tokenizer` picks the
loaded tokenizer with that fingerprint, and says so (:class:`TokenizerChoice`): ``matched``;
``unverified`` when the manifest records none and exactly one tokenizer is loaded (used, unchecked);
``mismatch`` when tokenizers are loaded but none has the shard's fingerprint; ``none`` when no
tokenizer can be picked (none loaded, or several and no fingerprint). Only ``matched`` and
``unverified`` decode token strings; otherwise the API shows ids alone.

:func:`require_token` is attached by :func:`~logitcache.server.http.app.create_app` only to the
routers that need it (seal when the server has a token; reads and ``/metrics`` too under
``--http-reads-need-token``), so the OpenAPI schema declares the bearer scheme exactly where it
is checked.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from logitcache.core.manifest import ShardManifest
from logitcache.core.tokenizers import tokenizer_fingerprint
from logitcache.server.shard import Shard
from logitcache.server.stats import ServerStats
from logitcache.server.store import Store

__all__ = [
    "LoadedTokenizer",
    "ShardId",
    "TokenizerChoice",
    "choose_tokenizer",
    "get_shard",
    "get_shard_tokenizer",
    "get_stats",
    "get_store",
    "get_tokenizers",
    "require_json",
    "require_token",
]

bearer = HTTPBearer(auto_error=False, description="the server's auth token (--auth-token)")


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_stats(request: Request) -> ServerStats:
    stats: ServerStats = request.app.state.stats
    return stats


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer the server holds, with its fingerprint."""

    name: str  # where it came from, for people: "Llama-3.2-3B/tokenizer.json"
    fingerprint: str  # tokenizer_fingerprint(tokenizer): "xxh64:..."
    tokenizer: Any  # a tokenizers.Tokenizer (decode, id_to_token, get_vocab_size)

    @classmethod
    def of(cls, tokenizer: Any, name: str) -> LoadedTokenizer:
        return cls(name, tokenizer_fingerprint(tokenizer), tokenizer)

    @property
    def vocab_size(self) -> int | None:
        size = getattr(self.tokenizer, "get_vocab_size", None)
        return int(size()) if callable(size) else None


TokenizerStatus = Literal["matched", "unverified", "none", "mismatch"]


@dataclass(frozen=True)
class TokenizerChoice:
    """Which loaded tokenizer decodes a shard's ids, and why (see the module docstring)."""

    status: TokenizerStatus
    fingerprint: str  # the manifest's ("" when it records none)
    name: str | None  # the chosen tokenizer's name (None: none chosen)
    detail: str  # the reason, for people
    tokenizer: Any = None  # the chosen tokenizer (None unless matched or unverified)


def choose_tokenizer(loaded: Sequence[LoadedTokenizer], manifest: ShardManifest | None) -> TokenizerChoice:
    """The loaded tokenizer whose fingerprint is the one ``manifest`` records (see the module docstring)."""
    if manifest is None:
        return TokenizerChoice("none", "", None, "the shard's manifest cannot be read: ids only")
    wanted = manifest.tokenizer_fingerprint
    if not loaded:
        return TokenizerChoice("none", wanted, None, "the server has no tokenizer (serve --tokenizer): ids only")
    if wanted:
        for candidate in loaded:
            if candidate.fingerprint == wanted:
                return TokenizerChoice("matched", wanted, candidate.name, "the fingerprints match", candidate.tokenizer)
        names = ", ".join(f"{t.name} ({t.fingerprint})" for t in loaded)
        return TokenizerChoice(
            "mismatch",
            wanted,
            None,
            f"no loaded tokenizer has the shard's fingerprint {wanted} (loaded: {names}): ids only",
        )
    if len(loaded) == 1:
        only = loaded[0]
        detail = f"the manifest records no tokenizer fingerprint: decoded with {only.name}, unchecked"
        return TokenizerChoice("unverified", wanted, only.name, detail, only.tokenizer)
    detail = f"the manifest records no tokenizer fingerprint and {len(loaded)} tokenizers are loaded: ids only"
    return TokenizerChoice("none", wanted, None, detail)


def get_tokenizers(request: Request) -> list[LoadedTokenizer]:
    tokenizers: list[LoadedTokenizer] = request.app.state.tokenizers
    return tokenizers


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


def get_shard_tokenizer(
    found: Annotated[Shard, Depends(get_shard)], tokenizers: Annotated[list[LoadedTokenizer], Depends(get_tokenizers)]
) -> TokenizerChoice:
    return choose_tokenizer(tokenizers, found.manifest)
