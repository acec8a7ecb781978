"""``logitcache demo``: a one-minute guided run of the whole service on the CPU.

1. **Corpus and tokenizer.** The corpus is this package's own docstrings (every module, class and
   function docstring of ``logitcache``, generated protobuf code excluded: about 50 KB of English
   and code), read from the installed source files. A byte-level BPE tokenizer (``tokenizers``, a
   core dependency) is trained on it in well under a second.
2. **Server.** The same server ``logitcache serve`` runs (gRPC and the REST app with the viewer,
   :class:`~logitcache.server.runner.ServerThread`) starts in this process on loopback, with the
   data directory ``./logitcache-demo-data``.
3. **Teacher.** A one-layer causal transformer (:class:`TinyLM`, d = 128, plain ``torch.nn``:
   no ``transformers``) is trained for a few seconds with cross-entropy, then run over every
   sequence of the corpus; a :class:`~logitcache.writer.CacheWriter` samples its distributions
   (random sampling, 50 rounds) and streams the records into shard 0, whose manifest names the
   teacher and the tokenizer's fingerprint.
4. **Student.** A smaller one (d = 32) is trained for a few steps on batches of a
   :class:`~logitcache.training.SparseKDLoader` with :func:`~logitcache.kd.sparse_kd_loss`; its
   losses before and after are measured on a fixed set of cached sequences.
5. **Viewer.** The summary ends with the viewer's address; the server keeps serving until Ctrl-C
   (``--no-wait``: it stops at once).

The data directory belongs to the demo: it is created with a marker file, emptied at the start of
the next demo run, and left in place at exit (``logitcache serve --data-dir logitcache-demo-data
--tokenizer logitcache-demo-data/tokenizer.json`` serves it again). A directory that holds other
files is refused. Ctrl-C (or SIGTERM) at any point stops the writer, the loader, the client and
the server, and exits with 130 (143 for SIGTERM).

The models run on one torch thread: they are too small to gain from more, and with other work on
the machine OpenMP's spinning threads made them many times slower. ``--quick`` shrinks everything
(5 KB of corpus, a few training steps) to a few seconds, for tests and CI.
"""

from __future__ import annotations

import ast
import fcntl
import itertools
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Generator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from logitcache.apps.corpus import tokenizer_fingerprint
from logitcache.client import CacheClient
from logitcache.core.config import SamplerConfig
from logitcache.kd import sparse_kd_loss
from logitcache.server.errors import StoreError
from logitcache.server.runner import ServerThread
from logitcache.server.settings import ServerSettings
from logitcache.training import SparseKDBatch, SparseKDLoader
from logitcache.writer import CacheWriter

__all__ = ["DEFAULT_DATA_DIR", "DemoOptions", "DemoSizes", "TinyLM", "corpus_texts", "run_demo"]

DEFAULT_DATA_DIR = Path("logitcache-demo-data")
MARKER = ".logitcache-demo"  # in the data directory: made by the demo, which may empty it
EOS = "<|endoftext|>"
SHARD = 0
TEACHER_NAME = "logitcache-demo-transformer-d128"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSizes:
    """How big the run is: the default takes about half a minute on two CPU cores, ``QUICK`` a few seconds."""

    vocab_size: int = 512  # BPE vocabulary (byte alphabet + merges + EOS)
    corpus_chars: int | None = None  # None: every docstring
    seq_len: int = 64
    teacher_dim: int = 128
    teacher_heads: int = 4
    teacher_steps: int = 200
    teacher_batch: int = 32
    teacher_lr: float = 3e-3
    write_batch: int = 16  # sequences per CacheWriter.write
    rounds: int = 50
    student_dim: int = 32
    student_heads: int = 2
    student_steps: int = 150
    student_batch: int = 8
    student_lr: float = 1e-2
    eval_sequences: int = 32
    threads: int = 1  # torch threads: these models are too small to gain from more, and CPUs may be shared


QUICK = DemoSizes(
    vocab_size=320,
    corpus_chars=5_000,
    seq_len=32,
    teacher_dim=32,
    teacher_heads=2,
    teacher_steps=15,
    teacher_batch=16,
    student_dim=16,
    student_heads=2,
    student_steps=6,
    eval_sequences=16,
)


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path = DEFAULT_DATA_DIR
    grpc: str = "127.0.0.1:0"
    http: str = "127.0.0.1:0"
    quick: bool = False
    wait: bool = True  # keep serving after the summary until Ctrl-C
    seed: int = 0
    progress: bool = True  # tqdm bars on stderr


class DemoError(Exception):
    """A problem the newcomer can fix (a data directory that is not the demo's, one in use)."""


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like a KeyboardInterrupt."""


# --------------------------------------------------------------------------- corpus and models


def corpus_texts(limit_chars: int | None = None) -> list[str]:
    """The docstrings of this package's modules, classes and functions, in file order."""
    root = Path(__file__).resolve().parents[1]  # the logitcache package
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "proto" in path.relative_to(root).parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
                    total += len(doc)
                    if limit_chars is not None and total >= limit_chars:
                        return texts
    if total < 2_000:
        raise DemoError(f"the demo's corpus (logitcache's docstrings under {root}) has only {total} characters")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (with an ``<|endoftext|>`` token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenize(tokenizer: Any, texts: list[str]) -> Tensor:
    """All of ``texts`` as one flat int64 token stream, documents joined with ``<|endoftext|>``."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


class TinyLM(nn.Module):
    """A causal language model in plain ``torch.nn``: token + position embeddings, one pre-norm
    transformer layer with a causal mask, a linear head."""

    def __init__(self, vocab_size: int, dim: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.mask: Tensor
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(max_len), persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """``input_ids [B, T]`` → logits ``[B, T, V]``; position ``t`` predicts token ``t + 1``."""
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        x = self.block(x, src_mask=self.mask[:t, :t], is_causal=True)
        logits: Tensor = self.head(self.norm(x))
        return logits


# --------------------------------------------------------------------------- data directory


def prepare_data_dir(data_dir: Path) -> bool:
    """Make ``data_dir`` an empty demo directory. True when an earlier demo's data was removed.

    Refuses (:class:`DemoError`) a file, a directory with files the demo did not make, and a
    directory a server (another demo) is serving: its lock is held while the old data goes.
    """
    marker = data_dir / MARKER
    if data_dir.exists() and not data_dir.is_dir():
        raise DemoError(f"--data-dir {data_dir}: expected a directory, got a file")
    existing = list(data_dir.iterdir()) if data_dir.is_dir() else []
    if existing and not marker.is_file():
        raise DemoError(
            f"--data-dir {data_dir} holds files the demo did not make; the demo empties its data directory "
            "at every run, so it only uses a new one or its own: pick another --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    removed = False
    with open(data_dir / ".lock", "a+") as lock:  # the server's lock file
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DemoError(f"--data-dir {data_dir} is in use by another logitcache server or demo") from None
        for path in existing:
            if path.name in (MARKER, ".lock"):
                continue
            removed = True
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        marker.write_text("made by `logitcache demo`, which empties this directory when it runs again\n")
    return removed


# --------------------------------------------------------------------------- the run


class _Printer:
    """Lines on ``out`` that do not tear the progress bars."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, text: str = "") -> None:
        tqdm.write(text, file=self.out)
        self.out.flush()


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """The guided run (see the module docstring). Returns the exit status: 0, or 130 / 143 when interrupted."""
    out = out or sys.stdout
    say = _Printer(out)
    main_thread = threading.current_thread() is threading.main_thread()
    previous: dict[int, Any] = {}
    if main_thread:
        # Ctrl-C raises KeyboardInterrupt even where the parent left SIGINT ignored; SIGTERM stops cleanly too
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with ExitStack() as cleanup:
            try:
                return _run(options, say, cleanup)
            except (KeyboardInterrupt, _Terminated):
                say("\ninterrupted: stopping the writer, the loader and the server ...")
                raise
    except DemoError as exc:
        print(f"logitcache demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("stopped")
        return 130
    except _Terminated:
        say("stopped")
        return 143
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _run(options: DemoOptions, say: _Printer, cleanup: ExitStack) -> int:
    sizes = QUICK if options.quick else DemoSizes()
    started = time.perf_counter()
    bar_args: dict[str, Any] = {"disable": not options.progress, "dynamic_ncols": True, "leave": True}
    settings = ServerSettings(  # explicit values: LOGITCACHE_* variables meant for `serve` do not apply here
        data_dir=options.data_dir,
        grpc=options.grpc,
        http=options.http,
        auth_token=None,
        tls_cert=None,
        tls_key=None,
        tokenizer=[],
        http_reads_need_token=False,
        shutdown_grace_seconds=1.0,
        log_level="WARNING",
    )
    if settings.http == "off":
        raise ValueError("--http: the demo needs the viewer; expected host:port, got 'off'")
    package_log = logging.getLogger("logitcache")  # the server's INFO lines would bury the story
    cleanup.callback(package_log.setLevel, package_log.level)
    package_log.setLevel(logging.WARNING)
    torch.manual_seed(options.seed)
    cleanup.callback(torch.set_num_threads, torch.get_num_threads())
    torch.set_num_threads(sizes.threads)
    removed = prepare_data_dir(options.data_dir)  # first: a directory that is not the demo's fails at once

    # 1. corpus and tokenizer
    texts = corpus_texts(sizes.corpus_chars)
    tokenizer = train_tokenizer(texts, sizes.vocab_size)
    vocab = int(tokenizer.get_vocab_size())
    tokens = tokenize(tokenizer, texts)
    t = sizes.seq_len
    sequences = tokens[: (tokens.numel() // t) * t].view(-1, t)
    n = sequences.shape[0]
    say(
        f"corpus    logitcache's own docstrings: {sum(map(len, texts)) / 1000:.0f} KB of text, {len(texts)} docstrings "
        f"→ {tokens.numel():,} tokens (byte-level BPE, V = {vocab}) → {n} sequences of {t}"
    )

    # 2. the server, in this process
    tokenizer.save(str(options.data_dir / "tokenizer.json"))
    try:
        running = ServerThread(settings, tokenizers=[tokenizer]).start()
    except StoreError as exc:  # another server took the directory since prepare_data_dir
        raise DemoError(str(exc)) from None
    cleanup.callback(running.stop, settings.shutdown_grace_seconds)
    grpc_address = running.address
    url = f"http://{settings.http.rpartition(':')[0]}:{running.http_port}/"
    say(
        f"server    gRPC {grpc_address}, REST + viewer {url}, data in {options.data_dir}"
        + (" (the previous demo's data removed)" if removed else "")
    )
    client = CacheClient(grpc_address)
    cleanup.callback(client.close)

    # 3. the teacher: train it a little, then cache its sparse targets
    teacher = TinyLM(vocab, sizes.teacher_dim, sizes.teacher_heads, t)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=sizes.teacher_lr)
    gen = torch.Generator().manual_seed(options.seed)
    with tqdm(total=sizes.teacher_steps, desc="teacher   training", unit="step", **bar_args) as bar:
        for _ in range(sizes.teacher_steps):
            starts = torch.randint(0, tokens.numel() - t - 1, (sizes.teacher_batch,), generator=gen)
            window = torch.stack([tokens[s : s + t + 1] for s in starts.tolist()])
            logits = teacher(window[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)
            bar.update()
    teacher.eval()
    sampler = SamplerConfig(method="multinomial", rounds=sizes.rounds)
    teacher_ce = torch.zeros(())
    shown = 0  # positions acknowledged so far (a disabled bar counts nothing)
    with (
        CacheWriter(
            client,
            shard=SHARD,
            sampler=sampler,
            seq_len=t,
            teacher=TEACHER_NAME,
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            seed=options.seed,
        ) as writer,
        tqdm(total=n * t, desc="teacher   → cache", unit="pos", unit_scale=True, **bar_args) as bar,
        torch.no_grad(),
    ):
        for lo in range(0, n, sizes.write_batch):
            chunk = sequences[lo : lo + sizes.write_batch]
            logits = teacher(chunk)
            teacher_ce += F.cross_entropy(logits[:, :-1].flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
            writer.write(range(lo, lo + chunk.shape[0]), chunk, logits)
            shown = _advance(bar, shown, writer.stats().positions_acked)
        writer.flush()
        _advance(bar, shown, writer.stats().positions_acked)
    stats = writer.stats()
    client.seal_shard(SHARD)  # complete: loaders accept only sealed shards by default
    teacher_loss = float(teacher_ce) / (n * (t - 1))

    # 4. the student, from the cache
    eval_loader = SparseKDLoader(
        client, [SHARD], batch_size=sizes.eval_sequences, shuffle=False, rank=0, world_size=1, prefetch=1
    )
    first = _closing_iter(eval_loader, cleanup)
    eval_batch = next(first)
    first.close()
    student = TinyLM(vocab, sizes.student_dim, sizes.student_heads, t)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            logits = student(eval_batch.input_ids).flatten(0, 1)
            k = eval_batch.target_ids.shape[-1]
            labels = eval_batch.labels.flatten()
            kd = sparse_kd_loss(
                logits, eval_batch.target_ids.view(-1, k), eval_batch.target_probs.view(-1, k), labels=labels
            )
            ce = F.cross_entropy(logits, labels, ignore_index=-100)
        return float(kd), float(ce)

    kd_before, ce_before = evaluate()
    loader = SparseKDLoader(client, [SHARD], batch_size=sizes.student_batch, seed=options.seed, rank=0, world_size=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=sizes.student_lr)
    entries = positions = steps = 0
    with tqdm(total=sizes.student_steps, desc="student   sparse KD", unit="step", **bar_args) as bar:
        epochs = itertools.count()
        while steps < sizes.student_steps:
            loader.set_epoch(next(epochs))
            epoch_batches = _closing_iter(loader, cleanup)
            for batch in epoch_batches:
                logits = student(batch.input_ids)
                k = batch.target_ids.shape[-1]
                loss = sparse_kd_loss(
                    logits.flatten(0, 1),
                    batch.target_ids.view(-1, k),
                    batch.target_probs.view(-1, k),
                    labels=batch.labels.flatten(),
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                entries += int((batch.target_ids >= 0).sum())
                positions += batch.num_positions
                bar.set_postfix(kd_loss=f"{loss.item():.2f}", refresh=False)
                steps += 1
                bar.update()
                if steps >= sizes.student_steps:
                    break
            epoch_batches.close()
    kd_after, ce_after = evaluate()

    # 5. the summary, and the viewer
    say()
    say(
        f"cached    {stats.positions_acked:,} positions in {n} sequences (shard {SHARD}), "
        f"{stats.bytes_per_position:.1f} bytes/position, {entries / max(positions, 1):.1f} unique tokens/position "
        f"(of V = {vocab}; {sizes.rounds} draws), {stats.positions_per_s:,.0f} positions/s"
    )
    say(
        f"student   next-token loss {ce_before:.2f} → {ce_after:.2f} (the teacher's: {teacher_loss:.2f}), "
        f"KD loss {kd_before:.2f} → {kd_after:.2f}, after {sizes.student_steps} steps"
    )
    say(f"ready in  {time.perf_counter() - started:.1f} s")
    say()
    say(f"open {url} to see what is stored")
    say(
        f"          (the data stays in {options.data_dir}; `logitcache serve --data-dir {options.data_dir} "
        f"--tokenizer {options.data_dir / 'tokenizer.json'}` serves it again)"
    )
    if options.wait:
        say("serving until Ctrl-C ...")
        while True:
            time.sleep(3600)
    return 0


def _advance(bar: tqdm[Any], shown: int, now: int) -> int:
    bar.update(now - shown)
    return now


def _closing_iter(loader: SparseKDLoader, cleanup: ExitStack) -> Generator[SparseKDBatch, None, None]:
    """``iter(loader)``, closed (its prefetch thread stopped) at the latest when ``cleanup`` runs."""
    iterator = iter(loader)
    assert isinstance(iterator, Generator)
    cleanup.callback(iterator.close)
    return iterator
