"""Optional dependencies: a missing one is an ``ImportError`` that names the extra to install.

The base install is the server and the thin client (no torch). The torch side (samplers, the
loss, the writer, the loader, the demo) needs ``logitcache[torch]``; the teacher command needs
``logitcache[teacher]`` (torch and transformers), and ``logitcache[gguf]`` to load a GGUF
checkpoint (``--gguf-file``); the server's ``--tokenizer`` needs
``logitcache[tokenizer]``; parquet exports (:mod:`logitcache.exports`) need ``logitcache[export]``
(``[s3]`` for ``s3://`` URLs, ``[datasets]`` for the exported-shard reader); teacher inference on
Ray needs ``logitcache[ray]``. The extras themselves are listed in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib

__all__ = ["require"]


def require(module: str, *, extra: str, by: str) -> None:
    """Import ``module``, or raise ``ImportError`` saying that ``by`` needs ``logitcache[extra]``."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{by} needs {module}, which is not installed: pip install 'logitcache[{extra}]'") from exc
