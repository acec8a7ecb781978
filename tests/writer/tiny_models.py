"""A tiny Llama teacher for the writer's tests: a real Hugging Face model directory in well under a second.

:func:`save_tiny_llama` trains a byte-level BPE tokenizer on :data:`TEXT` (``<eos>`` is its eos token,
``<unk>`` stands for characters outside printable ASCII that the text never shows), builds a
random-weight two-layer ``LlamaForCausalLM`` whose vocabulary is exactly the tokenizer's, and saves
both with ``save_pretrained``, so ``AutoTokenizer.from_pretrained(directory)`` and
``AutoModelForCausalLM.from_pretrained(directory)`` load them like any checkpoint from the Hub.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["EOS_TOKEN", "TEXT", "save_tiny_llama", "train_tiny_tokenizer"]

EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"

TEXT = """\
Knowledge distillation trains a small student model to imitate a large teacher. Instead of learning
only from the one token that actually came next, the student learns from the whole distribution the
teacher assigns to the next token, which carries far more information per position.

Running the teacher is expensive, so it is tempting to run it once over the corpus and keep its
outputs. A full distribution over a vocabulary of a hundred thousand tokens is far too large to
store for every position of a long corpus, so people keep only the few most likely tokens instead.

Keeping only the top tokens biases the student: it never hears about the long tail, and it learns
to be overconfident. Sampling a handful of tokens from the teacher's distribution, and storing how
often each was drawn, keeps the estimate unbiased while costing only a few bytes per position.

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! How vexingly
quick daft zebras jump; the five boxing wizards jump quickly. Numbers such as 0, 1, 2, 3, 4, 5, 6,
7, 8 and 9 appear too, with punctuation: (brackets), "quotes", 'apostrophes', colons, and dashes.
"""


def train_tiny_tokenizer(*, vocab_size_hint: int = 256, text: str = TEXT) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``text``, wrapped for ``transformers``.

    Its base alphabet is printable ASCII (so any ASCII text encodes without ``<unk>``) plus the two
    special tokens; merges learnt from ``text`` fill it up to about ``vocab_size_hint`` entries (fewer
    when the text supports fewer merges). ``len(tokenizer)`` is the exact size. Deterministic.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # ByteLevel maps bytes to printable characters; the trainer's alphabet must be in that mapping
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    alphabet = sorted({c for c in _byte_level(string.printable) if c in byte_chars})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size_hint,
        special_tokens=[EOS_TOKEN, UNK_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN)


def save_tiny_llama(directory: Path, *, vocab_size_hint: int = 256, seed: int = 0) -> Path:
    """Save a tiny random-weight Llama and its tokenizer into ``directory`` (created if missing); return it.

    hidden 32, MLP 64, 2 layers, 2 heads, 256 positions; ``vocab_size == len(tokenizer)`` and the
    model's ``eos_token_id`` is the tokenizer's. The weights depend only on ``seed``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer(vocab_size_hint=vocab_size_hint)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _byte_level(text: str) -> str:
    """``text``'s UTF-8 bytes as ByteLevel's printable stand-in characters."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in pre.pre_tokenize_str(text))
