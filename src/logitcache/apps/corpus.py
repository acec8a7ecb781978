"""The teacher's input: a token corpus cut into fixed-length sequences, and the tokenizer's fingerprint.

:func:`load_sequences` turns a corpus file into an integer array of shape ``[n_seqs, seq_len]``:
sequence ``i`` is tokens ``[i * seq_len, (i + 1) * seq_len)`` of the corpus, and the trailing
remainder shorter than ``seq_len`` is dropped, in every format. The format follows the extension:

``.bin``
    Flat raw token ids with no header, native byte order, as nanoGPT's ``prepare.py`` writes them
    (``np.array(ids, dtype=np.uint16).tofile(path)``). ``token_dtype`` names the element type,
    ``"uint16"`` (vocabularies up to 65,536), ``"uint32"``, ``"int32"`` or ``"int64"``; the file's
    size must be a multiple of it, and a file of wider integers read as a narrower type (an int64
    file read as uint16 shows ``[id, 0, 0, 0, ...]``) is refused, naming the pattern. The result
    is a read-only view of a memory map: nothing is copied, so a corpus far larger than memory
    costs only the pages a reader touches.
``.npy``
    A NumPy array of any integer dtype: 1-d (flat tokens, cut like ``.bin``) or 2-d
    ``[n_seqs, seq_len]`` (already cut; its second dimension must equal ``seq_len``). Loaded with
    ``mmap_mode="r"``, so it too is a read-only, memory-mapped view. Values are not range-checked.
``.jsonl``
    One JSON object per line with a string field ``text_key`` (``"text"``); blank lines are skipped.
    The documents are tokenized with the given tokenizer (no special tokens added), joined with the
    tokenizer's ``eos_token_id`` between consecutive documents when it has one, and cut. This one is
    built in memory, as ``uint32``.

Every problem with the file or the arguments raises :class:`CorpusError` (a ``ValueError``) whose
message names the file and what is wrong (for ``.jsonl``, the line number).

:func:`tokenizer_fingerprint` identifies a tokenizer's vocabulary and rules, so that a cache shard
can record which token ids its records were computed on, and a student can refuse ids from another
tokenizer (the manifest's ``tokenizer_fingerprint``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from logitcache.core.tokenizers import tokenizer_fingerprint

__all__ = ["TOKEN_DTYPES", "CorpusError", "corpus_fingerprint", "load_sequences", "tokenizer_fingerprint"]

TOKEN_DTYPES = ("uint16", "uint32", "int32", "int64")  # the element types a .bin corpus may have
_PATTERN_SAMPLE = 1 << 20  # elements of a .bin file looked at for the pattern of a wider element type
_NPY_MAGIC = b"\x93NUMPY"
_JSONL_BATCH = 1024  # documents tokenized per tokenizer call


class CorpusError(ValueError):
    """A corpus file, or an argument of :func:`load_sequences`, is unusable; the message says why."""


def load_sequences(
    path: Path | str,
    seq_len: int,
    *,
    tokenizer: Any | None = None,
    token_dtype: str = "uint16",
    text_key: str = "text",
) -> np.ndarray:
    """The corpus at ``path`` as ``[n_seqs, seq_len]`` token ids (see the module docstring for formats).

    ``tokenizer`` (a Hugging Face tokenizer) is needed for ``.jsonl`` only; ``token_dtype`` applies to
    ``.bin`` only; ``text_key`` to ``.jsonl`` only. ``.bin`` and ``.npy`` give read-only views of a
    memory map (no copy); ``.jsonl`` gives a new ``uint32`` array. ``n_seqs >= 1``: a corpus shorter
    than one sequence is an error.
    """
    path = Path(path)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise CorpusError(f"{path}: seq_len must be an integer >= 1, got {seq_len!r}")
    seq_len = int(seq_len)
    if token_dtype not in TOKEN_DTYPES:
        raise CorpusError(f"{path}: token_dtype must be one of {TOKEN_DTYPES}, got {token_dtype!r}")
    suffix = path.suffix.lower()
    if suffix not in (".bin", ".npy", ".jsonl"):
        raise CorpusError(
            f"{path}: unknown corpus format {suffix or '(no extension)'!r}; expected .bin, .npy or .jsonl"
        )
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if suffix == ".bin":
        return _load_bin(path, seq_len, np.dtype(token_dtype))
    if suffix == ".npy":
        return _load_npy(path, seq_len)
    if tokenizer is None:
        raise CorpusError(f"{path}: a .jsonl corpus needs a tokenizer")
    return _load_jsonl(path, seq_len, tokenizer, text_key)


def corpus_fingerprint(sequences: np.ndarray) -> str:
    """``"xxh64:<16 hex digits>"`` of ``sequences [n, T]``: their shape and every token id as uint32.

    The teacher records it in each shard's run (:class:`~logitcache.core.manifest.TeacherRun`):
    seq ``i`` of two shards with the same fingerprint is the same sequence. Reads the whole
    corpus once (xxh64 runs at several GB/s; a memory-mapped corpus is read in 16 M-token steps).
    """
    digest = xxhash.xxh64(np.array(sequences.shape, dtype=np.uint64).tobytes())
    step = max(1, (1 << 24) // max(1, sequences.shape[1]))
    for start in range(0, sequences.shape[0], step):
        digest.update(np.ascontiguousarray(sequences[start : start + step], dtype=np.uint32).tobytes())
    return "xxh64:" + digest.hexdigest()


def _cut(flat: np.ndarray, seq_len: int, path: Path) -> np.ndarray:
    """``flat`` [T] as [T // seq_len, seq_len], a view; the remainder is dropped."""
    n_seqs = flat.shape[0] // seq_len
    if n_seqs == 0:
        raise CorpusError(f"{path}: the corpus has {flat.shape[0]} tokens, shorter than one sequence of {seq_len}")
    return flat[: n_seqs * seq_len].reshape(n_seqs, seq_len)


def _load_bin(path: Path, seq_len: int, dtype: np.dtype[Any]) -> np.ndarray:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise CorpusError(
            f"{path}: {size} bytes is not a whole number of {dtype.name} tokens ({dtype.itemsize} bytes each); "
            "is token_dtype right?"
        )
    n_tokens = size // dtype.itemsize
    if n_tokens < seq_len:  # also keeps np.memmap away from an empty file, which it cannot map
        raise CorpusError(f"{path}: the corpus has {n_tokens} tokens, shorter than one sequence of {seq_len}")
    flat = np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))
    _refuse_wider_elements(np.asarray(flat[:_PATTERN_SAMPLE]), dtype, path)
    return _cut(np.asarray(flat), seq_len, path)  # a plain ndarray view; the map stays alive as its base


def _refuse_wider_elements(sample: np.ndarray, dtype: np.dtype[Any], path: Path) -> None:
    """Refuse a file of wider integers read as ``dtype``.

    A little-endian id of a wider type, read as ``factor`` elements of ``dtype``, is its low part
    followed by high parts that are zero or nearly so (``id >> 16`` is below 16 for any vocabulary
    under a million): ``[id, 0, 0, 0, id, 1, 0, 0, ...]`` for int64 read as uint16. A real token
    stream never has every ``factor``-th element a plausible id and all those between below 16.
    """
    for factor in (4, 2):
        wider = {4: "int32 or uint32", 8: "int64"}.get(dtype.itemsize * factor)
        if wider is None:
            continue
        groups = sample[: len(sample) // factor * factor].reshape(-1, factor)
        if groups.shape[0] >= 16 and int(groups[:, 1:].max()) < 16 <= int(groups[:, 0].max()):
            head = ", ".join(str(int(v)) for v in sample[: 2 * factor])
            raise CorpusError(
                f"{path}: read as {dtype.name}, its tokens come out as [{head}, ...]: every {factor}th looks like "
                f"an id and the {factor - 1} after it are all below 16, the pattern of {wider} ids read as "
                f"{dtype.name}; pass the file's own type (--token-dtype, one of {', '.join(TOKEN_DTYPES)})"
            )


def _load_npy(path: Path, seq_len: int) -> np.ndarray:
    with path.open("rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise CorpusError(f"{path}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: cannot read the array: {e}") from e
    if array.dtype.kind not in "iu":
        raise CorpusError(f"{path}: token ids must be integers, got dtype {array.dtype}")
    array = np.asarray(array)
    if array.ndim == 1:
        return _cut(array, seq_len, path)
    if array.ndim == 2:
        if array.shape[1] != seq_len:
            raise CorpusError(f"{path}: a 2-d corpus must have shape [n, {seq_len}], got {list(array.shape)}")
        if array.shape[0] == 0:
            raise CorpusError(f"{path}: the corpus has 0 sequences, shorter than one sequence of {seq_len}")
        return array
    raise CorpusError(f"{path}: expected a 1-d or 2-d array, got shape {list(array.shape)}")


def _load_jsonl(path: Path, seq_len: int, tokenizer: Any, text_key: str) -> np.ndarray:
    eos = getattr(tokenizer, "eos_token_id", None)
    separator = np.array([] if eos is None else [eos], dtype=np.uint32)
    pieces: list[np.ndarray] = []
    documents = _documents(path, text_key)
    while batch := list(itertools.islice(documents, _JSONL_BATCH)):
        for ids in _encode(tokenizer, batch):
            if pieces:
                pieces.append(separator)
            pieces.append(np.asarray(ids, dtype=np.uint32))
    if not pieces:
        raise CorpusError(f"{path}: no documents, shorter than one sequence of {seq_len}")
    return _cut(np.concatenate(pieces), seq_len, path)


def _documents(path: Path, text_key: str) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: line {lineno}: not UTF-8 ({e})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}: line {lineno}: not valid JSON ({e})") from e
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            if text_key not in obj:
                raise CorpusError(f"{path}: line {lineno}: no {text_key!r} field")
            text = obj[text_key]
            if not isinstance(text, str):
                raise CorpusError(f"{path}: line {lineno}: {text_key!r} must be a string, got {type(text).__name__}")
            yield text


def _encode(tokenizer: Any, texts: list[str]) -> Sequence[Sequence[int]]:
    """Token ids of each text, no special tokens: a Hugging Face tokenizer, or a bare ``tokenizers.Tokenizer``."""
    if callable(tokenizer):
        ids: Sequence[Sequence[int]] = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return ids
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
