"""The language-model experiments' corpus, tokenizer and model shapes, all built offline.

Corpus: the Python standard library's own ``.py`` sources of the running interpreter (test
packages excluded), sorted by path, every 20th file held out for validation, documents joined with
``<|endoftext|>``. Tokenizer: byte-level BPE trained on the training files with the ``tokenizers``
library and saved as a Hugging Face tokenizer directory, so ``logitcache teacher`` and
``AutoTokenizer`` load it. Token files: flat ``uint16`` ``.bin`` as nanoGPT writes them.
Models: small ``LlamaForCausalLM`` configurations with random initial weights.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from logitcache.apps.demo import EOS, train_tokenizer  # the same byte-level BPE the demo trains


@dataclass(frozen=True)
class Corpus:
    tokenizer_dir: Path
    train_bin: Path
    val_bin: Path
    vocab_size: int
    train_tokens: int
    val_tokens: int
    train_bytes: int
    files: int
    description: str

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only ``uint16`` memory map."""
        return np.memmap(self.train_bin if split == "train" else self.val_bin, dtype=np.uint16, mode="r")


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    return sorted(f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))


def build_corpus(out: Path, *, vocab_size: int = 4096, max_bytes: int | None = None) -> Corpus:
    """Tokenizer and token files under ``out`` (reused when they already exist there)."""
    files = stdlib_files()
    texts: list[str] = []
    total = 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if max_bytes is not None and total + len(text) > max_bytes:
            break
        texts.append(text)
        total += len(text)
    train = [t for i, t in enumerate(texts) if i % 20 != 19]
    val = [t for i, t in enumerate(texts) if i % 20 == 19] or texts[-1:]
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        tok = train_tokenizer(train, vocab_size)
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(str(tokenizer_dir))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    eos = tokenizer.convert_tokens_to_ids(EOS)
    counts = {}
    for split, docs in (("train", train), ("val", val)):
        path = out / f"{split}.bin"
        if not path.exists():
            ids: list[int] = []
            for doc_ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
                ids.extend(doc_ids)
                ids.append(eos)
            np.asarray(ids, dtype=np.uint16).tofile(path)
        counts[split] = path.stat().st_size // 2
    return Corpus(
        tokenizer_dir=tokenizer_dir,
        train_bin=out / "train.bin",
        val_bin=out / "val.bin",
        vocab_size=len(tokenizer),
        train_tokens=counts["train"],
        val_tokens=counts["val"],
        train_bytes=sum(len(t) for t in train),
        files=len(texts),
        description=f"CPython {sysconfig.get_python_version()} standard library sources ({len(texts)} files, tests "
        f"excluded; {sum(len(t) for t in train) / 1e6:.1f} MB of text for training), byte-level BPE V={len(tokenizer)}",
    )


def make_llama(vocab_size: int, *, hidden: int, layers: int, heads: int, seq_len: int, seed: int = 0) -> Any:
    """A random-weight ``LlamaForCausalLM`` (intermediate = 4 · hidden, tied embeddings off)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=seq_len,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


def random_windows(tokens: np.ndarray, seq_len: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """``[batch, seq_len + 1]`` int64 windows at random offsets (inputs and next-token labels)."""
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts]))
