"""Corpus loading (.bin / .npy / .jsonl, every error path), tokenizer fingerprints, and the tiny test teacher."""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from logitcache.apps.corpus import CorpusError, load_sequences, tokenizer_fingerprint
from tests.writer.tiny_models import TEXT, save_tiny_llama, train_tiny_tokenizer

DOCS = [paragraph.replace("\n", " ") for paragraph in TEXT.split("\n\n")]


def _maps_file(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is, through its chain of bases, a memory map of a file."""
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _joined(tokenizer: Any, docs: list[str], eos: int | None) -> list[int]:
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
    return ids


# ---- .bin --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_dtype", ["uint16", "uint32", "int32", "int64"])
def test_bin_cuts_flat_tokens_and_drops_the_remainder(tmp_path: Path, token_dtype: str) -> None:
    tokens = (np.arange(5 * 16 + 7) * 997 % 60_000).astype(token_dtype)
    tokens.tofile(tmp_path / "train.bin")  # what nanoGPT's prepare.py does
    sequences = load_sequences(tmp_path / "train.bin", 16, token_dtype=token_dtype)
    assert sequences.shape == (5, 16)
    assert sequences.dtype == np.dtype(token_dtype)
    np.testing.assert_array_equal(sequences, tokens[:80].reshape(5, 16))


def test_bin_is_a_read_only_view_of_the_file_not_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.arange(64, dtype=np.uint16).tofile(path)
    sequences = load_sequences(str(path), 8)
    assert _maps_file(sequences)
    assert not sequences.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        sequences[0, 0] = 1
    writer = np.memmap(path, dtype=np.uint16, mode="r+")
    writer[9] = 4321  # a change to the file shows through: the array is the file's pages
    writer.flush()
    del writer
    assert sequences[1, 1] == 4321


@pytest.mark.parametrize(
    ("stored", "read_as", "pattern"),
    [
        ("uint32", "uint16", "int32 or uint32"),
        ("int32", "uint16", "int32 or uint32"),
        ("int64", "uint16", "int64"),
        ("int64", "uint32", "int64"),
        ("int64", "int32", "int64"),
    ],
)
@pytest.mark.parametrize("vocab", [1000, 128_256])  # ids past 65,535 too: their high 16 bits are 1
def test_bin_of_wider_ids_read_as_a_narrower_type_is_refused(
    tmp_path: Path, stored: str, read_as: str, pattern: str, vocab: int
) -> None:
    """The issue's int64 file read as the default uint16 ran silently with four times the sequences."""
    np.random.default_rng(0).integers(0, vocab, 1024).astype(stored).tofile(tmp_path / "c.bin")
    with pytest.raises(CorpusError, match=rf"c\.bin: read as {read_as}, .* the pattern of {pattern} ids"):
        load_sequences(tmp_path / "c.bin", 8, token_dtype=read_as)
    assert load_sequences(tmp_path / "c.bin", 8, token_dtype=stored).shape == (128, 8)


@pytest.mark.parametrize("vocab", [300, 50_257, 128_256])
def test_real_token_streams_are_not_taken_for_wider_ids(tmp_path: Path, vocab: int) -> None:
    rng = np.random.default_rng(1)
    dtype = np.uint16 if vocab <= 65_536 else np.uint32
    tokens = rng.integers(0, vocab, 4096).astype(dtype)
    tokens[1::2] = np.where(rng.random(2048) < 0.9, tokens[1::2] % 16, tokens[1::2])  # mostly tiny ids between
    tokens.tofile(tmp_path / "c.bin")
    np.testing.assert_array_equal(load_sequences(tmp_path / "c.bin", 8, token_dtype=dtype.__name__).ravel(), tokens)


@pytest.mark.parametrize(("n_bytes", "token_dtype"), [(7, "uint16"), (10, "uint32"), (4099, "uint32")])
def test_bin_size_must_be_a_whole_number_of_tokens(tmp_path: Path, n_bytes: int, token_dtype: str) -> None:
    (tmp_path / "odd.bin").write_bytes(bytes(n_bytes))
    with pytest.raises(CorpusError, match=rf"odd\.bin: {n_bytes} bytes is not a whole number of {token_dtype}"):
        load_sequences(tmp_path / "odd.bin", 1, token_dtype=token_dtype)


@pytest.mark.parametrize("n_tokens", [0, 1, 15])
def test_bin_shorter_than_one_sequence(tmp_path: Path, n_tokens: int) -> None:
    np.ones(n_tokens, dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(CorpusError, match=rf"short\.bin: the corpus has {n_tokens} tokens, shorter than one sequence"):
        load_sequences(tmp_path / "short.bin", 16)


@pytest.mark.parametrize("token_dtype", ["uint8", "uint64", "float32"])
def test_bin_token_dtype_must_be_one_of_the_integer_types(tmp_path: Path, token_dtype: str) -> None:
    np.ones(16, dtype=np.uint32).tofile(tmp_path / "c.bin")
    with pytest.raises(CorpusError, match=f"token_dtype must be one of .*got '{token_dtype}'"):
        load_sequences(tmp_path / "c.bin", 4, token_dtype=token_dtype)


# ---- .npy --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint32])
def test_npy_flat_is_cut_like_bin(tmp_path: Path, dtype: type[np.integer[Any]]) -> None:
    tokens = np.arange(3 * 10 + 9, dtype=dtype)
    np.save(tmp_path / "flat.npy", tokens)
    sequences = load_sequences(tmp_path / "flat.npy", 10)
    assert sequences.shape == (3, 10)
    assert sequences.dtype == dtype
    np.testing.assert_array_equal(sequences, tokens[:30].reshape(3, 10))
    assert _maps_file(sequences)
    assert not sequences.flags.writeable


def test_npy_two_dimensional_is_taken_as_cut(tmp_path: Path) -> None:
    tokens = np.arange(4 * 6, dtype=np.int64).reshape(4, 6)
    np.save(tmp_path / "cut.npy", tokens)
    sequences = load_sequences(tmp_path / "cut.npy", 6)
    np.testing.assert_array_equal(sequences, tokens)
    assert _maps_file(sequences)


def test_npy_two_dimensional_must_have_seq_len_columns(tmp_path: Path) -> None:
    np.save(tmp_path / "cut.npy", np.zeros((4, 6), dtype=np.int64))
    with pytest.raises(CorpusError, match=r"cut\.npy: a 2-d corpus must have shape \[n, 8\], got \[4, 6\]"):
        load_sequences(tmp_path / "cut.npy", 8)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(16, dtype=np.float32), "token ids must be integers, got dtype float32"),
        (np.zeros(16, dtype=np.bool_), "token ids must be integers, got dtype bool"),
        (np.zeros((2, 2, 4), dtype=np.int32), r"expected a 1-d or 2-d array, got shape \[2, 2, 4\]"),
        (np.array(7, dtype=np.int32), r"expected a 1-d or 2-d array, got shape \[\]"),
        (np.zeros(3, dtype=np.int32), "the corpus has 3 tokens, shorter than one sequence of 4"),
        (np.zeros(0, dtype=np.int32), "the corpus has 0 tokens, shorter than one sequence of 4"),
        (np.zeros((0, 4), dtype=np.int32), "the corpus has 0 sequences, shorter than one sequence of 4"),
    ],
)
def test_npy_errors(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(CorpusError, match=rf"bad\.npy: {match}"):
        load_sequences(tmp_path / "bad.npy", 4)


def test_npy_that_is_not_numpy(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"just some bytes")
    with pytest.raises(CorpusError, match=r"bad\.npy: not a \.npy file"):
        load_sequences(tmp_path / "bad.npy", 4)


def test_npy_of_python_objects_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([1, "two", 3.0], dtype=object))
    with pytest.raises(CorpusError, match=r"objects\.npy: cannot read the array"):
        load_sequences(tmp_path / "objects.npy", 1)


# ---- .jsonl ------------------------------------------------------------------------------------------------


def test_jsonl_joins_documents_with_eos_and_cuts(tmp_path: Path, tokenizer: Any) -> None:
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": doc, "id": i}) for i, doc in enumerate(DOCS)])
    expected = _joined(tokenizer, DOCS, tokenizer.eos_token_id)
    assert expected.count(tokenizer.eos_token_id) == len(DOCS) - 1  # between documents, not after the last
    seq_len = 17
    assert len(expected) % seq_len  # so that there is a remainder to drop
    sequences = load_sequences(path, seq_len, tokenizer=tokenizer)
    assert sequences.shape == (len(expected) // seq_len, seq_len)
    assert sequences.dtype == np.uint32
    np.testing.assert_array_equal(sequences.ravel(), expected[: sequences.size])
    assert tokenizer.decode(sequences[0]) == tokenizer.decode(expected[:seq_len])


def test_jsonl_skips_blank_lines_and_reads_text_key(tmp_path: Path, tokenizer: Any) -> None:
    lines = ["", json.dumps({"body": DOCS[0]}), "   ", json.dumps({"body": DOCS[1], "text": 3}), ""]
    path = _write_jsonl(tmp_path / "docs.jsonl", lines)
    expected = _joined(tokenizer, DOCS[:2], tokenizer.eos_token_id)
    sequences = load_sequences(path, 8, tokenizer=tokenizer, text_key="body")
    np.testing.assert_array_equal(sequences.ravel(), expected[: len(expected) // 8 * 8])


def test_jsonl_without_eos_concatenates(tmp_path: Path) -> None:
    no_eos = PreTrainedTokenizerFast(tokenizer_object=train_tiny_tokenizer().backend_tokenizer)
    assert no_eos.eos_token_id is None
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": doc}) for doc in DOCS])
    expected = _joined(no_eos, DOCS, None)
    sequences = load_sequences(path, 5, tokenizer=no_eos)
    np.testing.assert_array_equal(sequences.ravel(), expected[: len(expected) // 5 * 5])


def test_jsonl_with_a_bare_tokenizers_tokenizer(tmp_path: Path, tokenizer: Any) -> None:
    bare = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # no eos_token_id: concatenated
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": doc}) for doc in DOCS])
    expected = _joined(tokenizer, DOCS, None)
    sequences = load_sequences(path, 5, tokenizer=bare)
    np.testing.assert_array_equal(sequences.ravel(), expected[: len(expected) // 5 * 5])


def test_jsonl_needs_a_tokenizer(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": "hello"})])
    with pytest.raises(CorpusError, match=r"docs\.jsonl: a \.jsonl corpus needs a tokenizer"):
        load_sequences(path, 4)


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"text": "unterminated', "not valid JSON"),
        ('["text", "a list"]', "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        ('{"title": "no text field"}', "no 'text' field"),
        ('{"text": 42}', "'text' must be a string, got int"),
        ('{"text": null}', "'text' must be a string, got NoneType"),
    ],
)
def test_jsonl_bad_line_names_its_number(tmp_path: Path, tokenizer: Any, bad_line: str, match: str) -> None:
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": DOCS[0]}), "", bad_line])
    with pytest.raises(CorpusError, match=rf"docs\.jsonl: line 3: {match}"):
        load_sequences(path, 4, tokenizer=tokenizer)


def test_jsonl_not_utf8_names_the_line(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"docs\.jsonl: line 2: not UTF-8"):
        load_sequences(path, 1, tokenizer=tokenizer)


def test_jsonl_shorter_than_one_sequence(tmp_path: Path, tokenizer: Any) -> None:
    path = _write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": "hi"}), json.dumps({"text": "there"})])
    n_tokens = len(_joined(tokenizer, ["hi", "there"], tokenizer.eos_token_id))
    with pytest.raises(CorpusError, match=rf"the corpus has {n_tokens} tokens, shorter than one sequence of 64"):
        load_sequences(path, 64, tokenizer=tokenizer)


def test_jsonl_without_documents(tmp_path: Path, tokenizer: Any) -> None:
    path = _write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(CorpusError, match=r"empty\.jsonl: no documents"):
        load_sequences(path, 1, tokenizer=tokenizer)


# ---- arguments common to every format ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.parquet", "corpus"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(bytes(64))
    with pytest.raises(CorpusError, match=r"unknown corpus format .*expected \.bin, \.npy or \.jsonl"):
        load_sequences(tmp_path / name, 4)


@pytest.mark.parametrize("name", ["missing.bin", "missing.npy", "missing.jsonl"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(CorpusError, match=re.escape(f"{name}: no such file")):
        load_sequences(tmp_path / name, 4)


@pytest.mark.parametrize("seq_len", [0, -3])
def test_seq_len_must_be_positive(tmp_path: Path, seq_len: int) -> None:
    np.ones(64, dtype=np.uint16).tofile(tmp_path / "c.bin")
    with pytest.raises(CorpusError, match=rf"c\.bin: seq_len must be an integer >= 1, got {seq_len}"):
        load_sequences(tmp_path / "c.bin", seq_len)


def test_corpus_error_is_a_value_error() -> None:
    assert issubclass(CorpusError, ValueError)


# ---- the tiny teacher and tokenizer fingerprints -----------------------------------------------------------


def test_tiny_llama_reloads_through_auto_classes(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<eos>")
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.unk_token_id not in ids  # the text is plain ASCII
    assert len(ids) < len(TEXT) / 2  # the merges compress it
    with torch.no_grad():
        logits = model(torch.tensor([ids[:40]])).logits
    assert logits.shape == (1, 40, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_llama_weights_depend_only_on_the_seed(tmp_path: Path, tiny_llama: Path) -> None:
    same = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "same", seed=0)).state_dict()
    other = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "other", seed=1)).state_dict()
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(same[name], reference[name], rtol=0, atol=0)
    assert not torch.equal(other[name], reference[name])


def test_fingerprint_survives_save_and_reload(tmp_path: Path, tiny_llama: Path, tokenizer: Any) -> None:
    fingerprint = tokenizer_fingerprint(tokenizer)
    assert fingerprint.startswith("xxh64:")
    assert len(fingerprint) == len("xxh64:") + 16
    tokenizer.save_pretrained(tmp_path / "again")
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "again")) == fingerprint
    assert tokenizer_fingerprint(train_tiny_tokenizer()) == fingerprint  # trained again: the same tokenizer
    bare = Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))
    assert tokenizer_fingerprint(bare) == fingerprint


def test_fingerprint_differs_for_another_vocabulary(tokenizer: Any) -> None:
    other = train_tiny_tokenizer(vocab_size_hint=300)
    assert len(other) != len(tokenizer)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_fingerprint_ignores_truncation_and_padding_left_by_a_call(tokenizer: Any) -> None:
    fingerprint = tokenizer_fingerprint(tokenizer)
    tokenizer.pad_token = "<unk>"
    try:
        tokenizer(["a long enough text", "b"], truncation=True, max_length=3, padding="max_length")
        assert tokenizer.backend_tokenizer.truncation is not None  # the call left its settings behind
        assert tokenizer_fingerprint(tokenizer) == fingerprint
        assert tokenizer.backend_tokenizer.truncation is not None  # and the fingerprint left them alone
    finally:
        tokenizer.pad_token = None
        tokenizer.backend_tokenizer.no_truncation()
        tokenizer.backend_tokenizer.no_padding()


class _VocabOnly:
    """A tokenizer with no fast backend: only ``get_vocab`` (as slow tokenizers have)."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_fingerprint_of_a_tokenizer_without_backend_hashes_the_vocabulary() -> None:
    fingerprint = tokenizer_fingerprint(_VocabOnly({"a": 0, "b": 1, "ab": 2}))
    assert fingerprint.startswith("xxh64:")
    assert tokenizer_fingerprint(_VocabOnly({"ab": 2, "b": 1, "a": 0})) == fingerprint
    assert tokenizer_fingerprint(_VocabOnly({"a": 0, "b": 2, "ab": 1})) != fingerprint


def test_fingerprint_of_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected a Hugging Face tokenizer, got int"):
        tokenizer_fingerprint(3)
