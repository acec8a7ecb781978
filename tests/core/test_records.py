"""The packed sequence record: round trips, widths, the torch path, every bad-input class, fuzzing."""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable
from typing import Literal, cast

import numpy as np
import pytest
import torch
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.core import records
from logitcache.core.records import (
    HEADER_SIZE,
    BadMagicError,
    BodyError,
    ChecksumError,
    CountSumError,
    EntryCountError,
    EntryOrderError,
    HeaderFieldError,
    InputHashError,
    RecordError,
    TokenIdError,
    TrailingBytesError,
    TruncatedRecordError,
    UnsupportedVersionError,
    WeightError,
)
from logitcache.targets.sampling import sample_random, sample_topk
from logitcache.targets.sparse import SparseTargets, decode_torch
from logitcache.targets.synthetic import lm_like_logits
from logitcache.training.batch_decode import decode_batch, decode_batch_on

VOCAB_SIZES = (50257, 128256, 151936, 262144)


def _sampled(
    vocab: int, positions: int = 24, rounds: int = 50, temperature: float = 1.0, seed: int = 0
) -> SparseTargets:
    gen = torch.Generator().manual_seed(seed)
    logits = lm_like_logits(positions, vocab, generator=gen)
    return sample_random(logits, rounds, temperature=temperature, generator=gen)


def _input_ids(targets: SparseTargets, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, targets.vocab_size, (targets.num_positions,), generator=gen)


def _assert_same(decoded: records.Record, input_ids: torch.Tensor, targets: SparseTargets) -> None:
    np.testing.assert_array_equal(decoded.input_ids, input_ids.numpy())
    np.testing.assert_array_equal(decoded.token_ids, targets.token_ids.numpy())
    np.testing.assert_array_equal(decoded.offsets, targets.offsets.numpy())
    if targets.kind == "sampled":
        np.testing.assert_array_equal(decoded.values, targets.values.numpy())
        if targets.weights is None:
            assert decoded.weights is None
        else:
            assert decoded.weights is not None
            np.testing.assert_array_equal(decoded.weights, targets.weights.numpy())


def _good_small() -> bytes:
    gen = torch.Generator().manual_seed(11)
    targets = sample_random(lm_like_logits(6, 50257, generator=gen), 20, generator=gen)
    return records.encode(torch.randint(0, 50257, (6,), generator=gen), targets)


_GOOD_SMALL = _good_small()


def reseal(data: bytes | bytearray) -> bytes:
    """Recompute the checksum after an edit, as the documented layout defines it."""
    buf = bytearray(data)
    h = xxhash.xxh3_64()
    h.update(bytes(buf[:48]))
    h.update(bytes(buf[HEADER_SIZE:]))
    struct.pack_into("<Q", buf, 48, h.intdigest())
    return bytes(buf)


def _edit_entry(data: bytes, index: int, token_id: int | None = None, value: int | None = None) -> bytes:
    """Rewrite entry ``index`` of a fixed-width record and reseal it."""
    h = records.read_header(data)
    ids_size, counts_size, _, _ = h.section_sizes()
    at = HEADER_SIZE + ids_size + counts_size + index * h.entry_bytes
    buf = bytearray(data)
    word = int.from_bytes(buf[at : at + h.entry_bytes], "little")
    old_id, old_value = word & ((1 << h.id_bits) - 1), word >> h.id_bits
    word = (old_id if token_id is None else token_id) | ((old_value if value is None else value) << h.id_bits)
    buf[at : at + h.entry_bytes] = word.to_bytes(h.entry_bytes, "little")
    return reseal(buf)


def _every_decoder_raises(data: bytes, error: type[RecordError], match: str | None = None) -> None:
    """``records.decode``, ``decode_torch`` and the loader's batch decoders, host and device (here on the
    CPU), alone and beside a good record."""
    with pytest.raises(error, match=match):
        records.decode(data)
    with pytest.raises(error, match=match):
        decode_torch(data)
    for batch in ([data], [_GOOD_SMALL, data], [data, _GOOD_SMALL]):
        with pytest.raises(error, match=match):
            decode_batch(batch)
        with pytest.raises(error, match=match):
            decode_batch_on(batch, "cpu")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
@pytest.mark.parametrize("dense", [False, True])
def test_sampled_round_trip(vocab: int, dense: bool) -> None:
    targets = _sampled(vocab)
    ids = _input_ids(targets)
    data = records.encode(ids, targets, dense=dense)
    decoded = records.decode(data)
    _assert_same(decoded, ids, targets)
    assert decoded.header.kind == "sampled"
    assert decoded.header.rounds == 50
    assert decoded.header.dense is dense
    torch.testing.assert_close(SparseTargets.from_record(decoded).target_probs(), targets.target_probs())


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
def test_entry_width_follows_vocab_and_rounds(vocab: int) -> None:
    h50 = records.read_header(records.encode(*_args(_sampled(vocab, rounds=50, positions=4))))
    assert h50.id_bits == (vocab - 1).bit_length()
    assert h50.value_bits == 6
    assert h50.entry_bytes == 3  # 16..18 id bits + 6 count bits
    # the paper's 17 + 7 bits = 3 bytes at N = 127 holds up to V = 131072; one byte more beyond
    h127 = records.read_header(records.encode(*_args(_sampled(vocab, rounds=127, positions=4))))
    assert h127.entry_bytes == (3 if vocab <= 131072 else 4)
    wide = records.read_header(records.encode(*_args(_sampled(vocab, rounds=1000, positions=4))))
    assert wide.value_bits == 10
    assert wide.count_bytes == 2
    assert wide.entry_bytes == (wide.id_bits + 10 + 7) // 8


def _args(targets: SparseTargets) -> tuple[torch.Tensor, SparseTargets]:
    return _input_ids(targets), targets


def test_three_bytes_per_entry_at_the_papers_settings() -> None:
    targets = _sampled(100_000, positions=64, rounds=127)
    data = records.encode(*_args(targets))
    h = records.read_header(data)
    assert (h.id_bits, h.value_bits, h.entry_bytes) == (17, 7, 3)
    expected = HEADER_SIZE + 64 * 3 + 64 * 1 + targets.num_entries * 3
    assert len(data) == expected


@pytest.mark.parametrize("temperature", [0.8, 1.25])
@pytest.mark.parametrize("dense", [False, True])
def test_weighted_round_trip(temperature: float, dense: bool) -> None:
    targets = _sampled(50257, temperature=temperature)
    ids = _input_ids(targets)
    decoded = records.decode(records.encode(ids, targets, dense=dense))
    assert decoded.header.weighted
    assert decoded.header.temperature == pytest.approx(temperature)
    _assert_same(decoded, ids, targets)


def _assert_quantiser_bound(decoded: records.Record, p: np.ndarray) -> None:
    """0 <= p̂_i - p_i <= p̂_{i-1} / 2**b (p̂_0 = 1): rounded up against the decoded previous."""
    q = decoded.values.astype(np.float64)
    previous = np.concatenate([[1.0], q[:-1]])
    previous[decoded.offsets[:-1]] = 1.0
    error = q - p
    assert (error >= -1e-6 * p).all()
    assert (error <= previous / 2**decoded.header.value_bits + 1e-6 * p).all()


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
@pytest.mark.parametrize("top_p", [None, 0.9])
@pytest.mark.parametrize("bits", [None, 7])
def test_topk_round_trip_within_the_quantiser_bound(vocab: int, top_p: float | None, bits: int | None) -> None:
    gen = torch.Generator().manual_seed(3)
    targets = sample_topk(lm_like_logits(40, vocab, generator=gen), 20, top_p=top_p)
    ids = _input_ids(targets)
    decoded = records.decode(records.encode(ids, targets, topk_value_bits=bits))
    h = decoded.header
    assert h.kind == "topk"
    assert h.k == 20
    assert h.top_p == (None if top_p is None else pytest.approx(top_p))
    np.testing.assert_array_equal(decoded.token_ids, targets.token_ids.numpy())
    np.testing.assert_array_equal(decoded.offsets, targets.offsets.numpy())
    _assert_quantiser_bound(decoded, targets.values.double().numpy())
    if bits == 7:
        assert h.entry_bytes == (3 if vocab <= 131072 else 4)  # the paper's 3 bytes where 17 id bits suffice
    else:
        assert h.value_bits >= 12
    # the residual (ghost) mass is recoverable
    true_residual = targets.residual_mass().numpy()
    got = SparseTargets.from_record(decoded).residual_mass().numpy()
    assert np.abs(got - true_residual).max() < (0.03 if bits == 7 else 2e-4)


@pytest.mark.parametrize("bits", [None, 7])
def test_topk_quantiser_on_a_sharp_head_with_a_flat_shoulder(bits: int | None) -> None:
    """A ratio just above 1 after a rounded-down entry must not be clipped (it once cost 33%)."""
    logits = torch.full((1, 100_000), math.log(1e-9))
    logits[0, :4] = torch.tensor([0.90, 0.0105, 0.0104, 0.0103]).log()
    targets = sample_topk(logits, 4)
    decoded = records.decode(records.encode(torch.zeros(1, dtype=torch.int64), targets, topk_value_bits=bits))
    p = targets.values.double().numpy()
    _assert_quantiser_bound(decoded, p)
    if bits is None:
        np.testing.assert_allclose(decoded.values, p, rtol=3e-3)  # the bound: 1 / (2**15 · 0.0117)


@pytest.mark.parametrize("kind", ["sampled", "weighted", "topk"])
def test_torch_decode_matches_numpy_decode(kind: str) -> None:
    if kind == "topk":
        targets = sample_topk(lm_like_logits(30, 5000, generator=torch.Generator().manual_seed(1)), 9)
    else:
        targets = _sampled(5000, temperature=0.9 if kind == "weighted" else 1.0)
    ids = _input_ids(targets)
    data = records.encode(ids, targets)
    ref = SparseTargets.from_record(records.decode(data))
    got_ids, got = decode_torch(data, "cpu")
    assert torch.equal(got_ids, ids)
    assert torch.equal(got.token_ids, ref.token_ids)
    assert torch.equal(got.offsets, ref.offsets)
    torch.testing.assert_close(got.values, ref.values)
    torch.testing.assert_close(got.target_probs(), ref.target_probs())
    dense_ids, dense_targets = decode_torch(records.encode(ids, targets, dense=True))
    assert torch.equal(dense_ids, ids)
    assert torch.equal(dense_targets.token_ids, ref.token_ids)


@pytest.mark.cuda
def test_torch_decode_on_cuda_matches_cpu() -> None:
    targets = _sampled(128256, positions=256, temperature=0.9)
    ids = _input_ids(targets)
    data = records.encode(ids, targets)
    cpu_ids, cpu = decode_torch(data, "cpu")
    gpu_ids, gpu = decode_torch(data, "cuda")
    assert gpu.token_ids.is_cuda
    assert torch.equal(gpu_ids.cpu(), cpu_ids)
    assert torch.equal(gpu.token_ids.cpu(), cpu.token_ids)
    torch.testing.assert_close(gpu.target_probs().cpu(), cpu.target_probs())
    with pytest.raises(CountSumError):
        decode_torch(_edit_entry(data, 0, value=int(cpu.values[0]) + 1), "cuda")


def test_dense_encoding_is_smaller_on_lm_like_data() -> None:
    targets = _sampled(128256, positions=512)
    ids = _input_ids(targets)
    assert len(records.encode(ids, targets, dense=True)) < 0.85 * len(records.encode(ids, targets))


def test_input_ids_hash_is_the_alignment_fingerprint() -> None:
    targets = _sampled(50257)
    ids = _input_ids(targets)
    h = records.read_header(records.encode(ids, targets))
    assert h.input_hash == records.input_ids_hash(ids) == records.input_ids_hash(ids.numpy().astype(np.uint32))
    shifted = torch.roll(ids, 1)
    assert records.input_ids_hash(shifted) != h.input_hash


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def good() -> bytes:
    targets = _sampled(50257, positions=8, rounds=20)
    return records.encode(_input_ids(targets), targets)


def test_truncated(good: bytes) -> None:
    _every_decoder_raises(good[:-1], TruncatedRecordError, "body: header says")
    _every_decoder_raises(good[:20], TruncatedRecordError, "header: expected at least 56 bytes, got 20")


def test_trailing_bytes(good: bytes) -> None:
    _every_decoder_raises(good + b"\x00", TrailingBytesError, r"1 extra")


def test_bad_magic(good: bytes) -> None:
    _every_decoder_raises(b"XXXX" + good[4:], BadMagicError, "magic: expected b'LGCR'")


def test_unknown_version(good: bytes) -> None:
    _every_decoder_raises(
        good[:4] + struct.pack("<H", 2) + good[6:], UnsupportedVersionError, "version: expected 1, got 2"
    )


def test_checksum_mismatch(good: bytes) -> None:
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x40
    _every_decoder_raises(bytes(corrupt), ChecksumError, "checksum")


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "field"),
    [
        (16, "<I", 9, "body_len"),  # T changed: the body no longer fits
        (20, "<I", 1000, "num_entries"),  # E out of range for T and N
        (6, "<B", 7, "method"),
        (7, "<B", 0x80, "flags"),
        (7, "<B", records.FLAG_WEIGHTED, "body_len"),  # weights flagged, none stored
        (24, "<B", 20, "id_bits"),
        (25, "<B", 3, "value_bits"),
        (8, "<I", 1, "vocab_size"),
        (36, "<I", 1, "reserved"),
        (28, "<f", float("nan"), "param"),
    ],
)
def test_inconsistent_header_fields(good: bytes, offset: int, fmt: str, value: float, field: str) -> None:
    buf = bytearray(good)
    struct.pack_into(fmt, buf, offset, value)
    _every_decoder_raises(reseal(buf), HeaderFieldError, f"^{field}: ")


def test_counts_not_summing_to_n(good: bytes) -> None:
    h = records.read_header(good)
    decoded = records.decode(good)
    _every_decoder_raises(_edit_entry(good, 0, value=int(decoded.values[0]) + 1), CountSumError, "summing to N = 20")
    _every_decoder_raises(_edit_entry(good, 0, value=0), CountSumError, "counts in 1..20")
    assert h.rounds == 20


def test_token_id_out_of_range(good: bytes) -> None:
    # 50257 needs 16 bits, so ids up to 65535 are representable but invalid
    _every_decoder_raises(_edit_entry(good, 3, token_id=60000), TokenIdError, "vocab_size 50257")


def test_input_id_out_of_range(good: bytes) -> None:
    buf = bytearray(good)
    struct.pack_into("<H", buf, HEADER_SIZE, 65000)
    _every_decoder_raises(reseal(buf), TokenIdError, "^input_ids: ")


def test_entry_counts_inconsistent(good: bytes) -> None:
    h = records.read_header(good)
    buf = bytearray(good)
    counts_at = HEADER_SIZE + h.section_sizes()[0]
    buf[counts_at] += 1  # one more entry at position 0 than E allows
    _every_decoder_raises(reseal(buf), EntryCountError, "sum of num_entries")
    buf[counts_at] = 0
    _every_decoder_raises(reseal(buf), EntryCountError, "entries at every position")


def test_entries_out_of_order(good: bytes) -> None:
    decoded = records.decode(good)
    assert decoded.offsets[1] >= 2, "position 0 needs two entries for this test"
    _every_decoder_raises(_edit_entry(good, 1, token_id=int(decoded.token_ids[0])), EntryOrderError, "ascending")


def test_topk_duplicate_ids() -> None:
    targets = sample_topk(lm_like_logits(4, 300, generator=torch.Generator().manual_seed(0)), 5)
    data = records.encode(_input_ids(targets), targets)
    first = int(records.decode(data).token_ids[0])
    _every_decoder_raises(_edit_entry(data, 1, token_id=first), EntryOrderError, "unique")


def test_bad_weights() -> None:
    targets = _sampled(5000, positions=4, temperature=0.8)
    data = bytearray(records.encode(_input_ids(targets), targets))
    struct.pack_into("<f", data, len(data) - 4, float("nan"))
    _every_decoder_raises(reseal(data), WeightError, "weights")


def test_input_hash_mismatch(good: bytes) -> None:
    buf = bytearray(good)
    struct.pack_into("<Q", buf, 40, 12345)
    _every_decoder_raises(reseal(buf), InputHashError, "input_hash")


def test_dense_body_that_does_not_decompress() -> None:
    targets = _sampled(5000, positions=4)
    data = bytearray(records.encode(_input_ids(targets), targets, dense=True))
    data[HEADER_SIZE + 4 :] = b"\x00" * (len(data) - HEADER_SIZE - 4)
    with pytest.raises(BodyError):
        records.decode(reseal(data))


def test_errors_are_value_errors() -> None:
    for cls in (BadMagicError, ChecksumError, TokenIdError, CountSumError, EntryCountError):
        assert issubclass(cls, RecordError)
        assert issubclass(cls, ValueError)


def test_encode_refuses_bad_input() -> None:
    targets = _sampled(5000, positions=6)
    with pytest.raises(ValueError, match="expected 6 ids"):
        records.encode(torch.zeros(5, dtype=torch.int64), targets)
    with pytest.raises(ValueError, match="integer token ids"):
        records.encode(torch.zeros(6), targets)
    with pytest.raises(TokenIdError, match="input_ids"):
        records.encode(torch.full((6,), 5000), targets)
    topk = sample_topk(lm_like_logits(3, 100, generator=torch.Generator().manual_seed(0)), 4)
    shuffled = SparseTargets(
        kind="topk", vocab_size=100, token_ids=topk.token_ids, values=topk.values.flip(0), offsets=topk.offsets, k=4
    )
    with pytest.raises(ValueError, match="decreasing order"):
        records.encode(torch.zeros(3, dtype=torch.int64), shuffled)
    with pytest.raises(ValueError, match="topk_value_bits"):
        records.encode(torch.zeros(3, dtype=torch.int64), topk, topk_value_bits=30)


# --------------------------------------------------------------------------- property-based


@st.composite
def _record_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, SparseTargets, bool]:
    vocab = draw(st.integers(2, 3000))
    positions = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(positions, vocab, generator=gen) * draw(st.floats(0.1, 8.0))
    method = draw(st.sampled_from(["multinomial", "systematic", "topk"]))
    if method == "topk":
        targets = sample_topk(
            logits, draw(st.integers(1, min(vocab, 40))), top_p=draw(st.none() | st.floats(0.05, 1.0))
        )
    else:
        rounds = draw(st.integers(1, 300))
        temperature = draw(st.sampled_from([1.0, 0.8, 1.5]))
        sampler = cast(Literal["multinomial", "systematic"], method)
        targets = sample_random(logits, rounds, method=sampler, temperature=temperature, generator=gen)
    ids = torch.randint(0, vocab, (positions,), generator=gen)
    return ids, targets, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_record_inputs())
def test_round_trip_property(case: tuple[torch.Tensor, SparseTargets, bool]) -> None:
    ids, targets, dense = case
    decoded = records.decode(records.encode(ids, targets, dense=dense))
    _assert_same(decoded, ids, targets)
    if targets.kind == "topk":
        assert np.abs(decoded.values - targets.values.numpy()).max() <= 1 / 2**decoded.header.value_bits + 1e-6


def _corruptions() -> st.SearchStrategy[Callable[[bytes], bytes]]:
    def flip(index: int, mask: int) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            buf = bytearray(data)
            if buf:
                buf[index % len(buf)] ^= mask
            return bytes(buf)

        return apply

    def cut(n: int) -> Callable[[bytes], bytes]:
        return lambda data: data[: max(0, len(data) - n)]

    def extend(extra: bytes) -> Callable[[bytes], bytes]:
        return lambda data: data + extra

    def splice(index: int, junk: bytes) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            at = index % max(1, len(data))
            return data[:at] + junk + data[at + len(junk) :]

        return apply

    return st.one_of(
        st.builds(flip, st.integers(0, 10**6), st.integers(1, 255)),
        st.builds(cut, st.integers(1, 400)),
        st.builds(extend, st.binary(min_size=1, max_size=16)),
        st.builds(splice, st.integers(0, 10**6), st.binary(min_size=1, max_size=24)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_record_inputs(), st.lists(_corruptions(), min_size=1, max_size=3))
def test_corruption_never_yields_garbage(
    case: tuple[torch.Tensor, SparseTargets, bool], corruptions: list[Callable[[bytes], bytes]]
) -> None:
    ids, targets, dense = case
    original = records.encode(ids, targets, dense=dense)
    data = original
    for corrupt in corruptions:
        data = corrupt(data)
    for decoder in (records.decode, lambda d: decode_torch(d)):
        try:
            decoder(data)
        except RecordError:
            continue
        assert data == original, "a changed record decoded without an error"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_record_inputs(), st.lists(_corruptions(), min_size=1, max_size=3))
def test_resealed_corruption_raises_only_record_errors(
    case: tuple[torch.Tensor, SparseTargets, bool], corruptions: list[Callable[[bytes], bytes]]
) -> None:
    """With a valid checksum over corrupted bytes, the structural checks alone must hold the line."""
    ids, targets, dense = case
    data = records.encode(ids, targets, dense=dense)
    for corrupt in corruptions:
        data = corrupt(data)
    if len(data) >= HEADER_SIZE:
        data = reseal(data)
    for decoder in (records.decode, lambda d: decode_torch(d)):
        with contextlib.suppress(RecordError):
            decoder(data)


# --------------------------------------------------------------------------- regressions


def _with_body(record: bytes, body: bytes) -> bytes:
    buf = bytearray(record[:HEADER_SIZE]) + body
    struct.pack_into("<I", buf, 32, len(body))
    return reseal(buf)


def test_dense_frame_declaring_a_huge_size_is_refused_without_allocating() -> None:
    targets = _sampled(300, positions=4, rounds=20)
    record = records.encode(torch.zeros(4, dtype=torch.int64), targets, dense=True)
    # a zstd frame header that declares 2**40 bytes of content (frame header only, no blocks)
    forged = struct.pack("<I", 0xFD2FB528) + b"\xe0" + struct.pack("<Q", 1 << 40) + b"\x00" * 16
    _every_decoder_raises(_with_body(record, forged), BodyError, "zstd frame")


def test_dense_body_with_trailing_data_is_refused() -> None:
    targets = _sampled(300, positions=4, rounds=20)
    record = records.encode(torch.zeros(4, dtype=torch.int64), targets, dense=True)
    _every_decoder_raises(_with_body(record, record[HEADER_SIZE:] + b"junk"), BodyError, "exactly one")


def test_highly_compressible_dense_records_decode() -> None:
    logits = torch.full((8192, 64), -1e4)
    logits[:, 7] = 0.0
    targets = sample_random(logits, 50)
    ids = torch.full((8192,), 7)
    decoded = records.decode(records.encode(ids, targets, dense=True))
    _assert_same(decoded, ids, targets)


def test_topk_levels_beyond_value_bits_are_refused() -> None:
    targets = sample_topk(torch.randn(2, 50257, generator=torch.Generator().manual_seed(0)), 4)
    data = bytearray(records.encode(torch.zeros(2, dtype=torch.int64), targets))
    assert records.read_header(bytes(data)).value_bits == 16
    data[25] = 9  # 16 + 9 bits still fit the 4-byte entries, but stored levels need 16
    _every_decoder_raises(reseal(data), HeaderFieldError, "levels below")


def test_weights_travel_whatever_the_temperature_rounds_to() -> None:
    targets = _sampled(3000, positions=5, temperature=1 + 1e-9)
    assert targets.weights is not None
    decoded = records.decode(records.encode(_input_ids(targets), targets))
    assert decoded.header.weighted
    assert decoded.weights is not None
    bad = SparseTargets(
        kind="sampled",
        vocab_size=3000,
        token_ids=targets.token_ids,
        values=targets.values,
        offsets=targets.offsets,
        weights=targets.weights[:-1],
        rounds=targets.rounds,
        temperature=0.9,
    )
    with pytest.raises(ValueError, match="weights: expected shape"):
        records.encode(_input_ids(targets), bad)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("kind", ["sampled", "weighted", "topk"])
def test_slice_positions_is_a_record_of_its_own(kind: str, dense: bool) -> None:
    gen = torch.Generator().manual_seed(40)
    logits = lm_like_logits(30, 4000, generator=gen)
    if kind == "topk":
        targets = sample_topk(logits, 6, top_p=0.9)
    else:
        targets = sample_random(logits, 40, generator=gen, temperature=0.85 if kind == "weighted" else 1.0)
    data = records.encode(_input_ids(targets), targets, dense=dense)
    full = records.decode(data)
    window = records.decode(records.slice_positions(data, 7, 19))
    lo, hi = full.offsets[7], full.offsets[19]
    assert window.header.num_positions == 12
    assert window.header.dense is dense
    np.testing.assert_array_equal(window.input_ids, full.input_ids[7:19])
    np.testing.assert_array_equal(window.token_ids, full.token_ids[lo:hi])
    np.testing.assert_array_equal(window.values, full.values[lo:hi])  # exact: nothing re-quantised
    np.testing.assert_array_equal(window.offsets, full.offsets[7:20] - lo)
    assert window.header.input_hash == records.input_ids_hash(full.input_ids[7:19])
    with pytest.raises(ValueError, match=r"window: expected 0 <= start < end <= T = 30, got \[5, 31\)"):
        records.slice_positions(data, 5, 31)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("normalize", [True, False])
def test_record_target_probs_match_the_targets(temperature: float, normalize: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = lm_like_logits(16, 500, generator=gen)
    targets = sample_random(logits, 30, temperature=temperature, generator=gen)
    record = records.decode(records.encode(torch.randint(0, 500, (16,), generator=gen), targets))
    expected = targets.target_probs(normalize=normalize).numpy()
    np.testing.assert_allclose(record.target_probs(normalize=normalize), expected, rtol=1e-6)
    np.testing.assert_allclose(record.target_probs(normalize=normalize, dtype=np.float64), expected, rtol=1e-6)
    topk = records.decode(records.encode(torch.zeros(16, dtype=torch.int64), sample_topk(logits, 4)))
    np.testing.assert_allclose(topk.target_probs(), topk.values, rtol=0)
