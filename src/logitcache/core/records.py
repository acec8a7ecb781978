"""The packed sequence record (format v1): one sequence's input ids and sparse targets, as bytes.

A record is what the server stores under one ``(shard, seq)`` key and what the training client
decodes. It is self-describing (every parameter needed to read it is in its header), versioned,
carries the input token ids it was computed from (alignment by construction: the student trains
on exactly these), and is fully validated on decode: a corrupt, truncated or inconsistent record
raises a :class:`RecordError` subclass naming the field, never returns garbage.

Byte layout (all integers little-endian)
----------------------------------------
Header, 56 bytes::

    offset size field
     0      4   magic            b"LGCR"
     4      2   version          1
     6      1   method           1 = sampled counts, 2 = top-k probabilities
     7      1   flags            bit 0 WEIGHTED (sampled, weights stored), bit 1 DENSE; others 0
     8      4   vocab_size       V, 2 <= V <= 2**24
    12      4   rounds_or_k      N (sampled, 1..65535) or k (top-k, 1..min(V, 65535))
    16      4   num_positions    T >= 1
    20      4   num_entries      E, T <= E <= T * (N or k)
    24      1   id_bits          ceil(log2 V)
    25      1   value_bits       sampled: bit_length(N); top-k: the quantiser's bits (1..24)
    26      1   input_id_bytes   ceil(id_bits / 8)
    27      1   count_bytes      1 if N (or k) <= 255 else 2
    28      4   param            float32: sampled → proposal temperature t; top-k → top_p (0 = off)
    32      4   body_len         bytes after the header
    36      4   reserved         0
    40      8   input_hash       XXH64 (seed 0) of the input ids as little-endian uint32
    48      8   checksum         XXH3-64 (seed 0) of header bytes [0, 48) followed by the body

Body, fixed-width layout (flags without DENSE), sections back to back::

    input_ids      T × input_id_bytes    the token at each position
    entry_counts   T × count_bytes       entries at each position (>= 1 each, sum E)
    entries        E × entry_bytes       entry_bytes = ceil((id_bits + value_bits) / 8); the
                                         little-endian integer  id | value << id_bits
    weights        E × 4 (WEIGHTED only) float32 importance weight p/q of each entry

Entries are grouped by position (position 0's first). Their values:

* sampled: ``value`` = how many of the N draws hit the token (1..N, summing to N per position),
  stored exactly; ids strictly ascending within a position. The target is ``count / N``, or
  ``count·w / Σ count·w`` when WEIGHTED. With V <= 131072 and N <= 127 an entry is the paper's
  17 + 7 bits = 3 bytes.
* top-k: entries in decreasing probability order; ``value`` = level ``L`` of a closed-loop ratio
  quantiser with ``b = value_bits`` bits: ``r = (L + 1) / 2**b``, ``p_1 = r_1``,
  ``p_i = p_{i-1} · r_i``. The encoder quantises each ratio against the *decoded* previous
  probability, rounding up, so errors do not accumulate and every ratio stays representable:
  ``0 <= p̂_i - p_i <= p̂_{i-1} / 2**b``. The residual mass is ``max(0, 1 - Σ p̂)``. By default
  ``b`` is at least 12 bits, filling the entry's last byte (15 bits and 4-byte entries for
  17-bit ids: errors below 3e-5·p̂); ``encode(..., topk_value_bits=7)`` gives the paper's 3-byte
  entries with the coarser bound.

Body, DENSE layout: one zstd frame whose content is the same sections, each split into byte
planes (all first bytes, then all second bytes, ...) and, for sampled records, with entry ids
delta-coded within each position (the first id as is, then the gap to the previous id); ids and
values are separate sections (``ceil(id_bits/8)`` and ``ceil(value_bits/8)`` planes). It is
smaller and slower to decode; the decompressed size is known from the header and enforced.

Decoding checks, in order: length, magic, version, every header field against the others,
body length (truncated / trailing bytes), checksum, then the content: entry counts, token ids
< V, counts summing to N, id order and uniqueness, weights, and the input-id hash.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import xxhash
import zstandard

from logitcache.core.config import MAX_ROUNDS, MAX_VOCAB_SIZE, TargetKind

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DENSE_RAW_BYTES",
    "MAX_POSITIONS",
    "BadMagicError",
    "BodyError",
    "ChecksumError",
    "CountSumError",
    "EntryCountError",
    "EntryOrderError",
    "HeaderFieldError",
    "InputHashError",
    "Record",
    "RecordError",
    "RecordHeader",
    "TargetArrays",
    "TokenIdError",
    "TrailingBytesError",
    "TruncatedRecordError",
    "UnsupportedVersionError",
    "WeightError",
    "check_input_hash",
    "declared_size",
    "decode",
    "decode_sections",
    "encode",
    "encode_sections",
    "header_for",
    "input_ids_hash",
    "peek_positions",
    "read_header",
    "slice_positions",
]

MAGIC = b"LGCR"
FORMAT_VERSION = 1
HEADER_SIZE = 56
_HEADER = struct.Struct("<4sHBBIIIIBBBBfIIQQ")
_T_FIELD = struct.Struct("<I")  # num_positions, at offset 16
_BODY_LEN = struct.Struct("<I")  # body_len, at offset 32
_CHECKED_HEADER = 48  # the checksum covers header bytes [0, 48) and the body
_METHOD_CODES: dict[TargetKind, int] = {"sampled": 1, "topk": 2}
_METHODS_BY_CODE: dict[int, TargetKind] = {v: k for k, v in _METHOD_CODES.items()}
FLAG_WEIGHTED = 1
FLAG_DENSE = 2
_KNOWN_FLAGS = FLAG_WEIGHTED | FLAG_DENSE
_MAX_TOPK_VALUE_BITS = 24
_MIN_DEFAULT_TOPK_BITS = 12
MAX_POSITIONS = 1 << 24  # per record
MAX_DENSE_RAW_BYTES = 1 << 29  # a dense body may decompress to at most 512 MiB

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
UIntArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


# --------------------------------------------------------------------------- errors


class RecordError(ValueError):
    """A record is malformed. ``field`` names the header field or section at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TruncatedRecordError(RecordError):
    """The record ends before its header or body does."""


class TrailingBytesError(RecordError):
    """Bytes follow the end of the record's body."""


class BadMagicError(RecordError):
    """The record does not start with :data:`MAGIC`."""


class UnsupportedVersionError(RecordError):
    """The record's format version is not one this code reads."""


class HeaderFieldError(RecordError):
    """A header field is out of range or disagrees with another field."""


class ChecksumError(RecordError):
    """The payload checksum does not match: the bytes were corrupted."""


class BodyError(RecordError):
    """A dense body does not decompress to the size its header promises."""


class EntryCountError(RecordError):
    """Per-position entry counts are out of range or do not sum to ``num_entries``."""


class TokenIdError(RecordError):
    """A token id (entry or input) is >= ``vocab_size``."""


class CountSumError(RecordError):
    """A sampled position's counts are not in ``[1, N]`` or do not sum to ``N``."""


class EntryOrderError(RecordError):
    """Entry ids repeat within a position, or sampled ids do not ascend."""


class WeightError(RecordError):
    """An importance weight is not a finite, non-negative number."""


class InputHashError(RecordError):
    """The input ids do not hash to the header's ``input_hash`` (misalignment)."""


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class RecordHeader:
    """The parsed, validated 56-byte header. See the module docstring for each field."""

    kind: TargetKind
    vocab_size: int
    rounds: int  # N for sampled records, 0 for top-k
    k: int  # k for top-k records, 0 for sampled
    num_positions: int  # T
    num_entries: int  # E
    id_bits: int
    value_bits: int
    input_id_bytes: int
    count_bytes: int
    temperature: float  # sampled: proposal temperature (1.0 for top-k)
    top_p: float | None  # top-k: top-p truncation, None when off
    weighted: bool
    dense: bool
    body_len: int
    input_hash: int
    checksum: int

    @property
    def entry_bytes(self) -> int:
        return (self.id_bits + self.value_bits + 7) // 8

    @property
    def max_entries_per_position(self) -> int:
        return self.rounds if self.kind == "sampled" else self.k

    def section_sizes(self) -> tuple[int, int, int, int]:
        """Fixed-layout sizes of (input_ids, entry_counts, entries, weights) in bytes."""
        t, e = self.num_positions, self.num_entries
        weights = 4 * e if self.weighted else 0
        return t * self.input_id_bytes, t * self.count_bytes, e * self.entry_bytes, weights


def _id_bits(vocab_size: int) -> int:
    return (vocab_size - 1).bit_length()


def _count_bytes(max_per_position: int) -> int:
    return 1 if max_per_position <= 0xFF else 2


def _default_topk_value_bits(id_bits: int) -> int:
    """At least 12 bits, filling the entry's last byte (15 bits for 17-bit ids: 4-byte entries)."""
    return 8 * ((id_bits + _MIN_DEFAULT_TOPK_BITS + 7) // 8) - id_bits


def read_header(data: bytes | bytearray | memoryview) -> RecordHeader:
    """Parse and validate a record's header, its length and its checksum (not the content)."""
    view = memoryview(data)
    if len(view) < HEADER_SIZE:
        raise TruncatedRecordError("header", f"expected at least {HEADER_SIZE} bytes, got {len(view)}")
    (
        magic,
        version,
        method,
        flags,
        vocab,
        rounds_or_k,
        num_positions,
        num_entries,
        id_bits,
        value_bits,
        input_id_bytes,
        count_bytes,
        param,
        body_len,
        reserved,
        input_hash,
        checksum,
    ) = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise BadMagicError("magic", f"expected {MAGIC!r}, got {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError("version", f"expected {FORMAT_VERSION}, got {version}")
    # length and checksum first: corrupted bytes are reported as corruption, not as bad fields
    actual = len(view) - HEADER_SIZE
    if actual < body_len:
        raise TruncatedRecordError("body", f"header says {body_len} bytes, got {actual}")
    if actual > body_len:
        raise TrailingBytesError("body", f"header says {body_len} bytes, got {actual} ({actual - body_len} extra)")
    digest = _checksum(view[:_CHECKED_HEADER], view[HEADER_SIZE:])
    if digest != checksum:
        raise ChecksumError("checksum", f"expected {checksum:#018x} from the header, computed {digest:#018x}")
    if method not in _METHODS_BY_CODE:
        raise HeaderFieldError("method", f"expected 1 (sampled) or 2 (top-k), got {method}")
    kind = _METHODS_BY_CODE[method]
    if flags & ~_KNOWN_FLAGS:
        raise HeaderFieldError("flags", f"expected only bits {_KNOWN_FLAGS:#04b}, got {flags:#04b}")
    weighted = bool(flags & FLAG_WEIGHTED)
    if not 2 <= vocab <= MAX_VOCAB_SIZE:
        raise HeaderFieldError("vocab_size", f"expected 2 <= V <= {MAX_VOCAB_SIZE}, got {vocab}")
    if id_bits != _id_bits(vocab):
        raise HeaderFieldError("id_bits", f"expected {_id_bits(vocab)} for V = {vocab}, got {id_bits}")
    if input_id_bytes != (id_bits + 7) // 8:
        raise HeaderFieldError("input_id_bytes", f"expected {(id_bits + 7) // 8}, got {input_id_bytes}")
    if kind == "sampled":
        if not 1 <= rounds_or_k <= MAX_ROUNDS:
            raise HeaderFieldError("rounds_or_k", f"expected 1 <= N <= {MAX_ROUNDS}, got {rounds_or_k}")
        if value_bits != rounds_or_k.bit_length():
            raise HeaderFieldError(
                "value_bits", f"expected {rounds_or_k.bit_length()} for N = {rounds_or_k}, got {value_bits}"
            )
        if not (math.isfinite(param) and param > 0):
            raise HeaderFieldError("param", f"expected a temperature > 0, got {param}")
    else:
        if not 1 <= rounds_or_k <= min(vocab, MAX_ROUNDS):
            raise HeaderFieldError("rounds_or_k", f"expected 1 <= k <= {min(vocab, MAX_ROUNDS)}, got {rounds_or_k}")
        if not 1 <= value_bits <= _MAX_TOPK_VALUE_BITS:
            raise HeaderFieldError("value_bits", f"expected 1..{_MAX_TOPK_VALUE_BITS}, got {value_bits}")
        if weighted:
            raise HeaderFieldError("flags", "WEIGHTED is only valid for sampled records")
        if not (math.isfinite(param) and 0.0 <= param <= 1.0):
            raise HeaderFieldError("param", f"expected top_p in (0, 1] or 0 (off), got {param}")
    if count_bytes != _count_bytes(rounds_or_k):
        raise HeaderFieldError("count_bytes", f"expected {_count_bytes(rounds_or_k)}, got {count_bytes}")
    if not 1 <= num_positions <= MAX_POSITIONS:
        raise HeaderFieldError("num_positions", f"expected 1 <= T <= {MAX_POSITIONS}, got {num_positions}")
    if not num_positions <= num_entries <= num_positions * rounds_or_k:
        raise HeaderFieldError(
            "num_entries",
            f"expected T <= E <= T·{rounds_or_k} = {num_positions * rounds_or_k}, got {num_entries}",
        )
    if reserved != 0:
        raise HeaderFieldError("reserved", f"expected 0, got {reserved}")
    header = RecordHeader(
        kind=kind,
        vocab_size=vocab,
        rounds=rounds_or_k if kind == "sampled" else 0,
        k=rounds_or_k if kind == "topk" else 0,
        num_positions=num_positions,
        num_entries=num_entries,
        id_bits=id_bits,
        value_bits=value_bits,
        input_id_bytes=input_id_bytes,
        count_bytes=count_bytes,
        temperature=float(param) if kind == "sampled" else 1.0,
        top_p=(float(param) if param > 0 else None) if kind == "topk" else None,
        weighted=weighted,
        dense=bool(flags & FLAG_DENSE),
        body_len=body_len,
        input_hash=input_hash,
        checksum=checksum,
    )
    if not header.dense and body_len != sum(header.section_sizes()):
        raise HeaderFieldError(
            "body_len", f"expected {sum(header.section_sizes())} for T, E and widths, got {body_len}"
        )
    return header


def peek_positions(data: bytes | bytearray | memoryview) -> int:
    """The header's ``num_positions`` without any validation (0 if the header is cut short).

    For records already verified (the server's read path) or known corrupt (its accounting).
    """
    return int(_T_FIELD.unpack_from(data, 16)[0]) if len(data) >= 20 else 0


def declared_size(data: bytes | bytearray | memoryview) -> int | None:
    """The size the header declares for the whole record (``HEADER_SIZE + body_len``), unvalidated.

    Reads only the header's first 36 bytes: a store checks a stored value's length against it
    before touching the rest (a damaged length must not send a read past the data).
    """
    return HEADER_SIZE + int(_BODY_LEN.unpack_from(data, 32)[0]) if len(data) >= 36 else None


def _checksum(header: memoryview | bytes, body: memoryview | bytes) -> int:
    h = xxhash.xxh3_64()
    h.update(header)
    h.update(body)
    return h.intdigest()


def _numpy(values: Any) -> npt.NDArray[Any]:
    """An array-like, or a tensor of any device (duck-typed: this module imports no torch), as numpy."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def input_ids_hash(input_ids: npt.ArrayLike) -> int:
    """XXH64 of token ids as little-endian uint32: the alignment fingerprint a record stores.

    A training job that brings its own token stream compares this with ``Record.header.input_hash``.
    Accepts torch tensors too.
    """
    arr = np.ascontiguousarray(_numpy(input_ids), dtype="<u4")
    return xxhash.xxh64_intdigest(arr.tobytes())


# --------------------------------------------------------------------------- decoded record


@dataclass(frozen=True)
class Record:
    """A decoded record (numpy arrays on the CPU); :meth:`SparseTargets.from_record
    <logitcache.targets.sparse.SparseTargets.from_record>` makes torch tensors of it."""

    header: RecordHeader
    input_ids: IntArray  # [T] int64
    token_ids: IntArray  # [E] int64
    values: IntArray | FloatArray  # [E] int64 counts (sampled) | float32 probabilities (top-k)
    offsets: IntArray  # [T + 1] int64
    weights: FloatArray | None  # [E] float32 p/q when WEIGHTED

    def target_probs(
        self, *, normalize: bool = True, dtype: type[np.floating[Any]] = np.float32
    ) -> npt.NDArray[np.floating[Any]]:
        """Each entry's target probability in ``dtype``, as :meth:`SparseTargets.target_probs` computes it."""
        h = self.header
        probs: npt.NDArray[np.floating[Any]] = self.values.astype(dtype, copy=False)
        if h.kind == "topk":
            return probs
        if self.weights is not None:
            probs = probs * self.weights.astype(dtype)
            if normalize:  # count·w / Σ count·w per position
                totals = np.add.reduceat(probs, self.offsets[:-1]) if probs.size else probs
                probs = probs / np.repeat(np.where(totals > 0, totals, dtype(1)), np.diff(self.offsets))
                return probs
        probs = probs / dtype(h.rounds)
        return probs


# --------------------------------------------------------------------------- encode


class TargetArrays(Protocol):
    """What :func:`encode` reads from a sequence's targets: the fields of
    :class:`~logitcache.targets.sparse.SparseTargets`, as numpy arrays or tensors of any device."""

    @property
    def kind(self) -> TargetKind: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def token_ids(self) -> Any: ...  # [E] integer ids
    @property
    def values(self) -> Any: ...  # [E] counts (sampled) | probabilities (top-k)
    @property
    def offsets(self) -> Any: ...  # [P + 1]
    @property
    def weights(self) -> Any: ...  # [E] float p/q, or None
    @property
    def rounds(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def num_positions(self) -> int: ...
    @property
    def num_entries(self) -> int: ...


def encode(
    input_ids: npt.ArrayLike,  # [T]
    targets: TargetArrays,
    *,
    dense: bool = False,
    topk_value_bits: int | None = None,
    zstd_level: int = 3,
) -> bytes:
    """Pack one sequence's input ids and targets into a v1 record.

    ``dense=True`` writes the zstd-compressed layout (smaller, slower to decode).
    ``topk_value_bits`` sets the top-k quantiser's precision (default: fill the entry's last byte).
    Raises ``ValueError`` (a :class:`RecordError` for inconsistent targets) on bad input.
    """
    ids_in = _as_int64(input_ids, "input_ids")
    if ids_in.ndim != 1:
        raise ValueError(f"input_ids: expected shape [T], got {ids_in.shape}")
    if not 1 <= ids_in.shape[0] <= MAX_POSITIONS:
        raise ValueError(f"input_ids: expected 1 <= T <= {MAX_POSITIONS} positions, got {ids_in.shape[0]}")
    if ids_in.shape[0] != targets.num_positions:
        raise ValueError(
            f"input_ids: expected {targets.num_positions} ids (one per target position), got {ids_in.shape[0]}"
        )
    vocab = targets.vocab_size
    if not 2 <= vocab <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size: expected 2 <= V <= {MAX_VOCAB_SIZE}, got {vocab}")
    id_bits = _id_bits(vocab)
    token_ids = _numpy(targets.token_ids).astype(np.int64, copy=False)
    offsets = _numpy(targets.offsets).astype(np.int64, copy=False)
    entry_counts = np.diff(offsets)
    weights: FloatArray | None = None
    if targets.kind == "sampled":
        per_position = targets.rounds
        if not 1 <= per_position <= MAX_ROUNDS:
            raise ValueError(f"rounds: expected 1 <= N <= {MAX_ROUNDS}, got {per_position}")
        value_bits = per_position.bit_length()
        values = _numpy(targets.values).astype(np.int64, copy=False)
        param = float(np.float32(targets.temperature))
        if not param > 0:
            raise ValueError(f"temperature: expected > 0 in float32, got {targets.temperature}")
        if targets.weights is not None:
            weights = _numpy(targets.weights).astype(np.float32)
            if weights.shape != (targets.num_entries,):
                raise ValueError(
                    f"weights: expected shape [{targets.num_entries}] (one per entry), got {weights.shape}"
                )
    else:
        per_position = targets.k
        if not 1 <= per_position <= min(vocab, MAX_ROUNDS):
            raise ValueError(f"k: expected 1 <= k <= {min(vocab, MAX_ROUNDS)}, got {per_position}")
        value_bits = _default_topk_value_bits(id_bits) if topk_value_bits is None else topk_value_bits
        if not 1 <= value_bits <= _MAX_TOPK_VALUE_BITS:
            raise ValueError(f"topk_value_bits: expected 1..{_MAX_TOPK_VALUE_BITS}, got {value_bits}")
        probs = _numpy(targets.values).astype(np.float64)
        if not (np.isfinite(probs).all() and (probs > 0).all() and (probs <= 1).all()):
            raise ValueError("values: expected top-k probabilities in (0, 1]")
        falls = np.diff(probs) <= 1e-7 * probs[1:]  # allow float noise between equal probabilities
        falls[offsets[1:-1] - 1] = True  # a position's first entry may be anything
        if falls.shape[0] and not falls.all():
            raise ValueError("values: expected top-k probabilities in decreasing order within each position")
        values = _ratio_encode(probs, offsets, value_bits)
        param = float(np.float32(targets.top_p or 0.0))
    if token_ids.shape[0] != offsets[-1] or values.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"targets: expected {offsets[-1]} ids and values (offsets[-1]), "
            f"got {token_ids.shape[0]} and {values.shape[0]}"
        )
    header = dataclasses.replace(
        header_for(
            targets.kind,
            vocab,
            per_position,
            value_bits=value_bits,
            param=param,
            weighted=weights is not None,
            dense=dense,
        ),
        num_positions=int(ids_in.shape[0]),
        num_entries=int(token_ids.shape[0]),
    )
    # the decoder's own checks guard the encoder: nothing invalid is ever written
    _validate_content(header, ids_in, entry_counts, token_ids, values, weights)
    return _assemble(header, ids_in, entry_counts, token_ids, values, weights, zstd_level)


def _as_int64(values: npt.ArrayLike, name: str) -> IntArray:
    arr = _numpy(values)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _assemble(
    header: RecordHeader,
    input_ids: IntArray,
    entry_counts: IntArray,
    token_ids: IntArray,
    values: IntArray,
    weights: FloatArray | None,
    zstd_level: int,
) -> bytes:
    h = header
    param = h.temperature if h.kind == "sampled" else (h.top_p or 0.0)
    if h.dense:
        gaps = _delta_within_positions(token_ids, entry_counts) if h.kind == "sampled" else token_ids
        raw = b"".join(
            [
                _to_planes(input_ids, h.input_id_bytes),
                _to_planes(entry_counts, h.count_bytes),
                _to_planes(gaps, (h.id_bits + 7) // 8),
                _to_planes(values, (h.value_bits + 7) // 8),
                b"" if weights is None else _to_planes(weights.view(np.uint32).astype(np.int64), 4),
            ]
        )
        if len(raw) > MAX_DENSE_RAW_BYTES:
            raise ValueError(f"dense: expected at most {MAX_DENSE_RAW_BYTES} bytes before compression, got {len(raw)}")
        body = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(raw)
    else:
        entries = token_ids | (values << h.id_bits)
        body = b"".join(
            [
                _pack_le(input_ids, h.input_id_bytes),
                _pack_le(entry_counts, h.count_bytes),
                _pack_le(entries, h.entry_bytes),
                b"" if weights is None else weights.astype("<f4").tobytes(),
            ]
        )
    flags = (FLAG_WEIGHTED if h.weighted else 0) | (FLAG_DENSE if h.dense else 0)
    fields = (
        MAGIC,
        FORMAT_VERSION,
        _METHOD_CODES[h.kind],
        flags,
        h.vocab_size,
        h.rounds or h.k,
        h.num_positions,
        h.num_entries,
        h.id_bits,
        h.value_bits,
        h.input_id_bytes,
        h.count_bytes,
        param,
        len(body),
        0,
        input_ids_hash(input_ids),
    )
    head = _HEADER.pack(*fields, 0)[:_CHECKED_HEADER]
    return head + struct.pack("<Q", _checksum(head, body)) + body


def _ratio_encode(probs: npt.NDArray[np.float64], offsets: IntArray, bits: int) -> IntArray:
    """Closed-loop ratio quantiser (see the module docstring). ``probs`` sorted per position."""
    scale = float(1 << bits)
    levels = np.zeros(probs.shape[0], dtype=np.int64)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    prev = np.ones(starts.shape[0], dtype=np.float64)
    for j in range(int(lengths.max(initial=0))):
        active = lengths > j
        idx = starts[active] + j
        ratio = probs[idx] / prev[active]
        # round up: p̂ >= p keeps the next ratio <= 1 (representable) and bounds the error by one step
        level = np.clip(np.ceil(ratio * scale) - 1.0, 0, scale - 1).astype(np.int64)
        levels[idx] = level
        prev[active] *= (level + 1) / scale
    return levels


def _ratio_decode(levels: IntArray, offsets: IntArray, bits: int) -> FloatArray:
    log_ratio = np.log((levels + 1).astype(np.float64)) - bits * math.log(2.0)
    running = np.cumsum(log_ratio)
    base = np.concatenate([[0.0], running])[offsets[:-1]]  # running sum before each position
    probs: FloatArray = np.exp(running - np.repeat(base, np.diff(offsets))).astype(np.float32)
    return probs


def _delta_within_positions(token_ids: IntArray, entry_counts: IntArray) -> IntArray:
    gaps = token_ids.copy()
    gaps[1:] -= token_ids[:-1]
    starts = np.cumsum(entry_counts) - entry_counts
    gaps[starts] = token_ids[starts]
    return gaps


def _pack_le(values: IntArray, width: int) -> bytes:
    """Each value as a ``width``-byte little-endian unsigned integer, back to back."""
    as_bytes = np.ascontiguousarray(values, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return as_bytes[:, :width].tobytes()


def _unpack_le(view: memoryview, count: int, width: int) -> UIntArray:
    """``count`` little-endian unsigned integers of ``width`` bytes each, as uint32 (or uint64)."""
    dtype = np.uint32 if width <= 4 else np.uint64
    if width in (1, 2, 4, 8):
        return cast(UIntArray, np.frombuffer(view, dtype=f"<u{width}", count=count).astype(dtype))
    # odd widths: read a wider word at each entry (strided, over a copy with padding) and mask it
    word = 4 if width < 4 else 8
    padded = np.zeros(count * width + word, dtype=np.uint8)
    padded[: count * width] = np.frombuffer(view, dtype=np.uint8, count=count * width)
    wide = np.ndarray((count,), dtype=f"<u{word}", buffer=padded, strides=(width,))
    return cast(UIntArray, np.bitwise_and(wide.astype(dtype), (1 << (8 * width)) - 1, dtype=dtype))


def _to_planes(values: IntArray, width: int) -> bytes:
    arr = np.ascontiguousarray(values, dtype="<u8")
    return np.stack([(arr >> np.uint64(8 * j)) & np.uint64(0xFF) for j in range(width)]).astype(np.uint8).tobytes()


def _from_planes(raw: memoryview, count: int, width: int) -> npt.NDArray[np.uint64]:
    planes = np.frombuffer(raw, dtype=np.uint8, count=count * width).reshape(width, count)
    out: npt.NDArray[np.uint64] = planes[0].astype(np.uint64)
    for j in range(1, width):
        out |= planes[j].astype(np.uint64) << np.uint64(8 * j)
    return out


# --------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray | memoryview) -> Record:
    """Decode and fully validate one record (vectorised numpy, no loop over positions)."""
    header = read_header(data)
    view = memoryview(data)[HEADER_SIZE:]
    if header.dense:
        input_ids, entry_counts, token_ids, values, weights = _split_dense(header, view)
    else:
        input_ids, entry_counts, token_ids, values, weights = _split_fixed(header, view)
    offsets = _validate_content(header, input_ids, entry_counts, token_ids, values, weights)
    check_input_hash(header, input_ids)
    probs_or_counts: IntArray | FloatArray = (
        _ratio_decode(values, offsets, header.value_bits) if header.kind == "topk" else values
    )
    return Record(header, input_ids, token_ids, probs_or_counts, offsets, weights)


def decode_sections(data: bytes | bytearray | memoryview) -> tuple[RecordHeader, Sections]:
    """A record's header and its sections as stored, validated as :func:`decode` validates them:
    ``(input_ids [T], entry_counts [T], token_ids [E], values [E], weights [E] | None)``, where
    ``values`` are the stored integers (sampled counts, or top-k quantiser levels: not probabilities).
    :func:`encode_sections` of them gives back the same bytes (with the zstd level of a DENSE record)."""
    header = read_header(data)
    view = memoryview(data)[HEADER_SIZE:]
    sections = (_split_dense if header.dense else _split_fixed)(header, view)
    _validate_content(header, *sections)
    check_input_hash(header, sections[0])
    return header, sections


def header_for(
    kind: TargetKind,
    vocab_size: int,
    per_position: int,
    *,
    value_bits: int,
    param: float,
    weighted: bool = False,
    dense: bool = False,
) -> RecordHeader:
    """The header :func:`encode_sections` completes: ``per_position`` is N (sampled) or k (top-k),
    ``param`` the temperature (sampled) or top-p (top-k, 0 = off)."""
    id_bits = _id_bits(vocab_size)
    f32 = float(np.float32(param))
    return RecordHeader(
        kind=kind,
        vocab_size=vocab_size,
        rounds=per_position if kind == "sampled" else 0,
        k=per_position if kind == "topk" else 0,
        num_positions=0,
        num_entries=0,
        id_bits=id_bits,
        value_bits=value_bits,
        input_id_bytes=(id_bits + 7) // 8,
        count_bytes=_count_bytes(per_position),
        temperature=f32 if kind == "sampled" else 1.0,
        top_p=f32 if kind == "topk" and f32 > 0 else None,
        weighted=weighted,
        dense=dense,
        body_len=0,
        input_hash=0,
        checksum=0,
    )


def encode_sections(
    header: RecordHeader,
    input_ids: npt.ArrayLike,
    entry_counts: npt.ArrayLike,
    token_ids: npt.ArrayLike,
    values: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    *,
    zstd_level: int = 3,
) -> bytes:
    """A record from sections as :func:`decode_sections` returns them. ``header`` gives the parameters
    (kind, vocabulary, rounds or k, value bits, temperature or top-p, layout); its sizes, hash and
    checksum are computed here. The content is validated as :func:`decode` validates it
    (:class:`RecordError` naming the field), so nothing invalid is produced."""
    ids_in, counts, ids, vals = (
        _as_int64(a, name)
        for a, name in (
            (input_ids, "input_ids"),
            (entry_counts, "entry_counts"),
            (token_ids, "token_ids"),
            (values, "values"),
        )
    )
    w = None if weights is None else _numpy(weights).astype(np.float32)
    if header.weighted != (w is not None):
        raise HeaderFieldError("weights", f"expected weights {'' if header.weighted else 'not '}to be given")
    if not 1 <= ids_in.shape[0] <= MAX_POSITIONS or counts.shape != ids_in.shape:
        raise HeaderFieldError(
            "entry_counts",
            f"expected 1..{MAX_POSITIONS} positions and one count each, got {ids_in.shape}, {counts.shape}",
        )
    if ids.shape != vals.shape or (w is not None and w.shape != ids.shape):
        raise HeaderFieldError("entries", "expected as many token ids, values and weights")
    h = dataclasses.replace(header, num_positions=int(ids_in.shape[0]), num_entries=int(ids.shape[0]))
    _validate_content(h, ids_in, counts, ids, vals, w)
    return _assemble(h, ids_in, counts, ids, vals, w, zstd_level)


def decode_small_sections(h: RecordHeader, data: bytes | bytearray | memoryview) -> tuple[IntArray, IntArray]:
    """A fixed-width record's ``(input_ids [T], offsets [T + 1])``, checked as :func:`decode` checks them
    (entry counts in ``1..N`` summing to ``E``, input ids below ``V``, the input hash), without reading
    its entries: the host's part of a device decode (:func:`logitcache.targets.sparse.decode_torch`).
    ``h`` is the record's validated header (:func:`read_header`)."""
    if h.dense:
        raise ValueError("decode_small_sections: expected a fixed-width record, got a dense one")
    body = memoryview(data)[HEADER_SIZE:]
    t = h.num_positions
    input_ids = _unpack_le(body, t, h.input_id_bytes).astype(np.int64)
    offsets = _check_entry_counts(h, _unpack_le(body[t * h.input_id_bytes :], t, h.count_bytes).astype(np.int64))
    if input_ids.shape[0] and input_ids.max() >= h.vocab_size:
        bad = int(np.flatnonzero(input_ids >= h.vocab_size)[0])
        raise TokenIdError("input_ids", f"expected ids < vocab_size {h.vocab_size}, got {input_ids[bad]} at {bad}")
    check_input_hash(h, input_ids)
    return input_ids, offsets


def slice_positions(data: bytes | bytearray | memoryview, start: int, end: int, *, zstd_level: int = 3) -> bytes:
    """The positions ``[start, end)`` of a record, as a valid record of its own (same layout).

    Entries are copied as stored (top-k levels restart at every position), so nothing is
    re-quantised. The header and checksum are verified; the content is trusted as written.
    """
    header = read_header(data)
    if not 0 <= start < end <= header.num_positions:
        raise ValueError(f"window: expected 0 <= start < end <= T = {header.num_positions}, got [{start}, {end})")
    view = memoryview(data)[HEADER_SIZE:]
    split = _split_dense if header.dense else _split_fixed
    input_ids, entry_counts, token_ids, values, weights = split(header, view)
    offsets = _check_entry_counts(header, entry_counts)
    lo, hi = int(offsets[start]), int(offsets[end])
    window = dataclasses.replace(header, num_positions=end - start, num_entries=hi - lo)
    return _assemble(
        window,
        input_ids[start:end],
        entry_counts[start:end],
        token_ids[lo:hi],
        values[lo:hi],
        None if weights is None else weights[lo:hi],
        zstd_level,
    )


Sections = tuple[IntArray, IntArray, IntArray, IntArray, FloatArray | None]


def _split_fixed(h: RecordHeader, body: memoryview) -> Sections:
    ids_size, counts_size, entries_size, _ = h.section_sizes()
    t, e = h.num_positions, h.num_entries
    input_ids = _unpack_le(body, t, h.input_id_bytes).astype(np.int64)
    entry_counts = _unpack_le(body[ids_size:], t, h.count_bytes).astype(np.int64)
    entries = _unpack_le(body[ids_size + counts_size :], e, h.entry_bytes)
    token_ids = (entries & entries.dtype.type((1 << h.id_bits) - 1)).astype(np.int64)
    values = (entries >> entries.dtype.type(h.id_bits)).astype(np.int64)
    weights = None
    if h.weighted:
        start = ids_size + counts_size + entries_size
        weights = np.frombuffer(body[start:], dtype="<f4", count=e).astype(np.float32)
    return input_ids, entry_counts, token_ids, values, weights


def _split_dense(h: RecordHeader, body: memoryview) -> Sections:
    t, e = h.num_positions, h.num_entries
    widths = [(t, h.input_id_bytes), (t, h.count_bytes), (e, (h.id_bits + 7) // 8), (e, (h.value_bits + 7) // 8)]
    if h.weighted:
        widths.append((e, 4))
    expected = sum(n * w for n, w in widths)
    if expected > MAX_DENSE_RAW_BYTES:
        raise BodyError("body", f"expected at most {MAX_DENSE_RAW_BYTES} decompressed bytes, header implies {expected}")
    try:
        # the frame must declare exactly the size the header implies: nothing larger is allocated
        declared = zstandard.frame_content_size(body)
        if declared != expected:
            raise BodyError("body", f"expected a zstd frame of {expected} bytes for T, E and widths, got {declared}")
        stream = zstandard.ZstdDecompressor().decompressobj()
        raw = stream.decompress(body)
        if not stream.eof or stream.unused_data:
            raise BodyError("body", "expected exactly one complete zstd frame")
    except zstandard.ZstdError as exc:
        raise BodyError("body", f"zstd frame does not decompress: {exc}") from exc
    if len(raw) != expected:
        raise BodyError("body", f"expected {expected} decompressed bytes for T, E and widths, got {len(raw)}")
    arrays: list[npt.NDArray[np.uint64]] = []
    view, pos = memoryview(raw), 0
    for n, w in widths:
        arrays.append(_from_planes(view[pos:], n, w))
        pos += n * w
    input_ids, entry_counts, ids, values = (a.astype(np.int64) for a in arrays[:4])
    if h.kind == "sampled":
        # undo the per-position delta coding: a running sum restarted at each position
        _check_entry_counts(h, entry_counts)
        running = np.cumsum(ids)
        starts = np.cumsum(entry_counts) - entry_counts
        base = running[starts] - ids[starts]
        ids = running - np.repeat(base, entry_counts)
    weights = arrays[4].astype(np.uint32).view(np.float32) if h.weighted else None
    return input_ids, entry_counts, ids, values, weights


def _check_entry_counts(h: RecordHeader, entry_counts: IntArray) -> IntArray:
    per = h.max_entries_per_position
    if entry_counts.min() < 1 or entry_counts.max() > per:
        bad = int(np.flatnonzero((entry_counts < 1) | (entry_counts > per))[0])
        raise EntryCountError(
            "entry_counts", f"expected 1..{per} entries at every position, got {entry_counts[bad]} at position {bad}"
        )
    total = int(entry_counts.sum())
    if total != h.num_entries:
        raise EntryCountError("entry_counts", f"expected a sum of num_entries = {h.num_entries}, got {total}")
    offsets = np.zeros(entry_counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(entry_counts, out=offsets[1:])
    return offsets


def _validate_content(
    h: RecordHeader,
    input_ids: IntArray,
    entry_counts: IntArray,
    token_ids: IntArray,
    values: IntArray,
    weights: FloatArray | None,
) -> IntArray:
    """Check the decoded sections against each other and the header; return the offsets."""
    offsets = _check_entry_counts(h, entry_counts)
    if input_ids.shape[0] and (input_ids.min() < 0 or input_ids.max() >= h.vocab_size):
        bad = int(np.flatnonzero((input_ids < 0) | (input_ids >= h.vocab_size))[0])
        raise TokenIdError("input_ids", f"expected ids < vocab_size {h.vocab_size}, got {input_ids[bad]} at {bad}")
    if token_ids.min() < 0 or token_ids.max() >= h.vocab_size:
        bad = int(np.flatnonzero((token_ids < 0) | (token_ids >= h.vocab_size))[0])
        raise TokenIdError("entries", f"expected ids < vocab_size {h.vocab_size}, got {token_ids[bad]} at entry {bad}")
    starts = offsets[:-1]
    if h.kind == "sampled":
        if values.min() < 1 or values.max() > h.rounds:
            bad = int(np.flatnonzero((values < 1) | (values > h.rounds))[0])
            raise CountSumError("entries", f"expected counts in 1..{h.rounds}, got {values[bad]} at entry {bad}")
        sums = np.add.reduceat(values, starts)
        if (sums != h.rounds).any():
            bad = int(np.flatnonzero(sums != h.rounds)[0])
            raise CountSumError(
                "entries", f"expected counts summing to N = {h.rounds}, got {sums[bad]} at position {bad}"
            )
        steps = np.diff(token_ids)
        steps[starts[1:] - 1] = 1  # a position's first id may be anything
        if steps.shape[0] and steps.min() < 1:
            bad = int(np.flatnonzero(steps < 1)[0]) + 1
            raise EntryOrderError("entries", f"expected strictly ascending ids within a position, not at entry {bad}")
        if weights is not None and not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise WeightError("weights", "expected finite importance weights >= 0")
    else:
        if values.min() < 0 or values.max() >= 1 << h.value_bits:
            raise HeaderFieldError("entries", f"expected top-k levels below 2**value_bits = {1 << h.value_bits}")
        keyed = np.repeat(np.arange(h.num_positions, dtype=np.int64), entry_counts) * h.vocab_size + token_ids
        keyed.sort()
        if (np.diff(keyed) == 0).any():
            raise EntryOrderError("entries", "expected unique token ids within each position")
    return offsets


def check_input_hash(h: RecordHeader, input_ids: npt.ArrayLike) -> None:
    """Raise :class:`InputHashError` unless ``input_ids`` hash to the header's ``input_hash``."""
    digest = input_ids_hash(input_ids)
    if digest != h.input_hash:
        raise InputHashError("input_hash", f"expected {h.input_hash:#018x}, the input ids hash to {digest:#018x}")
