"""Tokenizer fingerprints: which tokenizer a shard's input ids were computed with.

:func:`tokenizer_fingerprint` identifies a tokenizer's vocabulary and rules. The teacher stores it
in each shard's manifest (``tokenizer_fingerprint``); a student refuses ids from another tokenizer,
and the server's REST API picks, per shard, the loaded tokenizer whose fingerprint matches. Duck
typed (no import of ``tokenizers`` or ``transformers`` here): anything with a ``backend_tokenizer``
(a fast Hugging Face tokenizer), a ``to_str`` (a bare ``tokenizers.Tokenizer``) or a ``get_vocab``.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

__all__ = ["tokenizer_fingerprint"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """``"xxh64:<16 hex digits>"``, identifying ``tokenizer``'s vocabulary and rules.

    For a fast Hugging Face tokenizer (or a bare ``tokenizers.Tokenizer``) it hashes the backend's
    full serialization (``tokenizer.json``: vocabulary, merges, added tokens, normalizer,
    pre-tokenizer, post-processor, decoder), without the truncation and padding settings, which a
    call such as ``tokenizer(texts, truncation=True)`` leaves behind and which do not change the ids
    of a text. Otherwise it hashes the sorted vocabulary (``get_vocab()``). The same tokenizer saved
    and reloaded gives the same fingerprint.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and callable(getattr(tokenizer, "to_str", None)):
        backend = tokenizer  # a tokenizers.Tokenizer
    if backend is not None:
        spec: str = backend.to_str()
        if backend.truncation is not None or backend.padding is not None:
            clean = type(backend).from_str(spec)  # leave the caller's tokenizer as it is
            clean.no_truncation()
            clean.no_padding()
            spec = clean.to_str()
        payload = spec.encode()
    elif callable(getattr(tokenizer, "get_vocab", None)):
        payload = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    else:
        raise TypeError(f"tokenizer_fingerprint: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    return "xxh64:" + xxhash.xxh64(payload).hexdigest()
