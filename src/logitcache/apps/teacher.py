"""``logitcache teacher``: run a Hugging Face causal LM over a corpus and cache its sparse targets.

Sequence ``i`` of the corpus (tokens ``[i·T, (i+1)·T)``, see :mod:`logitcache.apps.corpus`) is
stored as seq ``i``. Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``), rank ``r`` of
``W`` takes the contiguous slice ``[r·n/W, (r+1)·n/W)`` of the sequences and writes shard
``--shard + r``, on ``cuda:LOCAL_RANK`` when there is a GPU: many GPUs fill the cache together and
no two ranks touch the same shard.

**The run record.** Each shard's manifest records the teacher, the tokenizer's fingerprint, the
sampler and the run (:class:`~logitcache.core.manifest.TeacherRun`: the corpus fingerprint, the
run's size, ``WORLD_SIZE``, the rank, its slice and ``--seed``); the server stores no seq outside
the slice. A rerun into a shard whose record differs (another world size, ``--limit``, corpus,
seed, teacher or sampler) is refused (exit 2) naming each differing field with both values, as is
a run whose slice overlaps a shard holding the same corpus with the same teacher, sampler and seed
(the same records, stored and trained on twice; another ``--seed`` is a deliberate second sample).

**Resume.** A rerun of the same command skips the seqs its shard already holds. Batches are the
fixed runs ``[lo + j·B, lo + (j+1)·B)`` of the slice and seq ``s`` is sampled with its own seed
(:func:`~logitcache.writer.cache_writer.sequence_seed`), so a resumed run stores exactly the bytes
of an uninterrupted one. Ctrl-C ends with one line saying how many sequences are stored. When
every seq of the slice is stored the shard is sealed (``--no-seal``: left open), and loaders
accept it (they refuse unsealed shards by default).

**The pieces.** Each step is a function of its own (:func:`seq_slice`, :func:`run_manifest`,
:func:`check_run`, :func:`pending_batches`, :func:`write_batch`, :func:`load_teacher`...), so that
:mod:`logitcache.integrations.ray` runs the same steps on Ray Data and stores, for the same input,
the records and manifests that this command stores under ``WORLD_SIZE`` ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from logitcache.apps.corpus import corpus_fingerprint, load_sequences, tokenizer_fingerprint
from logitcache.client import CacheClient, NotFoundError
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardInfo, ShardManifest, TeacherRun
from logitcache.extras import require
from logitcache.writer.cache_writer import CacheWriter

__all__ = [
    "TeacherInterrupted",
    "TeacherSummary",
    "check_run",
    "check_token_ids",
    "load_teacher",
    "load_tokenizer",
    "pending_batches",
    "pretrained",
    "run",
    "run_manifest",
    "seq_slice",
    "teacher_dtype",
    "teacher_name",
    "write_batch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSummary:
    rank: int
    world_size: int
    shard: int
    sequences: int  # this rank's share of the corpus
    skipped: int  # already stored (a rerun)
    written: int  # records newly stored
    positions: int  # positions acknowledged by the server
    seconds: float
    positions_per_s: float
    bytes_per_position: float


class TeacherInterrupted(KeyboardInterrupt):
    """Ctrl-C: ``stored`` of the shard's ``sequences`` seqs are durably stored (``None``: unknown)."""

    def __init__(self, shard: int, stored: int | None, sequences: int) -> None:
        super().__init__(shard, stored, sequences)
        self.shard, self.stored, self.sequences = shard, stored, sequences

    def __str__(self) -> str:
        stored = "an unknown number" if self.stored is None else str(self.stored)
        return (
            f"interrupted: {stored} of {self.sequences} sequences of shard {self.shard} are stored; "
            "rerun the same command to resume"
        )


def pretrained(model: Path | None, gguf_file: Path | None) -> tuple[str, dict[str, Any]]:
    """``from_pretrained``'s folder and keywords for ``--model DIR`` or ``--gguf-file FILE`` (exactly one given)."""
    if gguf_file is None:
        if model is None or not model.is_dir():  # from_pretrained would take it for a hub name and go to the network
            raise FileNotFoundError(f"--model {model}: no such directory")
        return str(model), {}
    for module in ("gguf", "accelerate"):  # transformers needs both to load a GGUF checkpoint
        require(module, extra="gguf", by="logitcache teacher --gguf-file")
    if not gguf_file.is_file():
        raise FileNotFoundError(f"--gguf-file {gguf_file}: no such file")
    return str(gguf_file.parent), {"gguf_file": gguf_file.name}


def load_tokenizer(tokenizer: Path | None, model: Path | None, gguf_file: Path | None) -> Any | None:
    """The tokenizer at ``tokenizer``, else the teacher's own; ``None`` (with a warning) where there is none."""
    from transformers import AutoTokenizer

    folder, kwargs = (str(tokenizer), {}) if tokenizer else pretrained(model, gguf_file)
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer at %s (%s): the manifest gets no tokenizer fingerprint", folder, exc)
        return None


def teacher_name(name: str | None, model: Path | None, gguf_file: Path | None) -> str:
    """The manifest's teacher: ``name``, else the model directory's name or the GGUF file's stem."""
    if name:
        return name
    if gguf_file is not None:
        return gguf_file.stem
    if model is None:
        raise ValueError("--model, --gguf-file: expected one of the two")
    return model.resolve().name


def teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    """``--dtype``: a torch dtype by name; ``"auto"`` is bfloat16 on CUDA, float32 elsewhere."""
    if name != "auto":
        dtype: torch.dtype = getattr(torch, name)
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_teacher(
    model: Path | None, gguf_file: Path | None, device: torch.device, dtype: torch.dtype
) -> tuple[Any, int]:
    """The causal LM on ``device`` in eval mode, and its vocabulary size (its output layer's rows)."""
    from transformers import AutoModelForCausalLM

    folder, kwargs = pretrained(model, gguf_file)
    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    loaded = loaded.to(device).eval()
    return loaded, int(loaded.get_output_embeddings().weight.shape[0])


def seq_slice(rank: int, world_size: int, total: int) -> tuple[int, int]:
    """Rank ``rank`` of ``world_size``'s contiguous slice ``[lo, hi)`` of ``total`` sequences."""
    return rank * total // world_size, (rank + 1) * total // world_size


def check_token_ids(sequences: np.ndarray, lo: int, hi: int, vocab: int, data: object) -> None:
    """``ValueError`` unless every token id of seqs ``[lo, hi)`` of ``sequences [n, T]`` is in ``[0, vocab)``."""
    if hi <= lo:
        return
    mine = sequences[lo:hi]
    outside = int(np.count_nonzero((mine < 0) | (mine >= vocab)))
    if outside:
        raise ValueError(
            f"{data}: {outside} of the {mine.size:,} token ids of seqs [{lo}, {hi}) are outside the teacher's "
            f"vocabulary [0, {vocab}) (they range over [{int(mine.min())}, {int(mine.max())}]): is --token-dtype "
            "right, and is the corpus tokenized with the teacher's tokenizer?"
        )


def run_manifest(
    sampler: SamplerConfig,
    vocab: int,
    *,
    seq_len: int,
    teacher: str,
    tokenizer_fingerprint: str,
    corpus_fingerprint: str,
    sequences: int,
    world_size: int,
    rank: int,
    seed: int,
) -> ShardManifest:
    """The manifest of the shard that rank ``rank`` of a run of ``world_size`` over ``sequences`` seqs fills."""
    lo, hi = seq_slice(rank, world_size, sequences)
    return ShardManifest.for_sampler(
        sampler,
        vocab,
        seq_len=seq_len,
        teacher=teacher,
        tokenizer_fingerprint=tokenizer_fingerprint,
        run=TeacherRun(
            corpus_fingerprint=corpus_fingerprint,
            sequences=sequences,
            world_size=world_size,
            rank=rank,
            seq_start=lo,
            seq_stop=hi,
            seed=seed,
        ),
    )


def pending_batches(
    lo: int, hi: int, batch_size: int, stored: npt.NDArray[np.uint64]
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]]:
    """The fixed batches ``[lo + j·B, lo + (j+1)·B)`` of the slice with a seq not in ``stored``: ``(seqs, needed)``."""
    batches = []
    for start in range(lo, hi, batch_size):
        seqs = np.arange(start, min(start + batch_size, hi), dtype=np.int64)
        needed = ~np.isin(seqs, stored)
        if needed.any():
            batches.append((seqs, needed))
    return batches


def write_batch(
    model: Any,
    writer: CacheWriter,
    sequences: np.ndarray,
    seqs: npt.NDArray[np.int64],
    needed: npt.NDArray[np.bool_],
    device: torch.device,
) -> None:
    """Run the teacher on the whole fixed batch ``sequences[seqs]`` and hand the ``needed`` rows to ``writer``.

    The forward pass always sees the whole batch, so a resumed or retried batch gets the same logits
    (the same shapes, the same arithmetic) as an uninterrupted run, hence the same record bytes.
    """
    ids = torch.from_numpy(np.asarray(sequences[seqs], dtype=np.int64)).to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits  # the whole fixed batch: the same logits on resume
    rows = torch.from_numpy(needed).to(device)
    writer.write(seqs[needed].tolist(), ids[rows], logits[rows])


def run(args: argparse.Namespace) -> TeacherSummary:
    """Run the teacher as ``args`` (the ``teacher`` flags of :mod:`logitcache.apps.cli`) say; raise on any failure."""
    require("transformers", extra="teacher", by="logitcache teacher")

    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK, WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got {rank}, {world_size}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError(f"--batch-size, --limit: expected >= 1, got {args.batch_size}, {args.limit}")
    device = torch.device(
        args.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)  # streams, events and pinned copies all on this rank's GPU
    dtype = teacher_dtype(args.dtype, device)
    sampler = SamplerConfig(
        method=args.sampler, rounds=args.rounds, temperature=args.temperature, k=args.top_k, top_p=args.top_p
    )

    tokenizer = load_tokenizer(args.tokenizer, args.model, args.gguf_file)
    sequences = load_sequences(
        args.data, args.seq_len, tokenizer=tokenizer, token_dtype=args.token_dtype, text_key=args.text_key
    )
    total = min(len(sequences), args.limit or len(sequences))
    lo, hi = seq_slice(rank, world_size, total)
    shard = args.shard + rank

    model, vocab = load_teacher(args.model, args.gguf_file, device, dtype)
    check_token_ids(sequences, lo, hi, vocab, args.data)
    manifest = run_manifest(
        sampler,
        vocab,
        seq_len=args.seq_len,
        teacher=teacher_name(args.teacher_name, args.model, args.gguf_file),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else "",
        corpus_fingerprint=corpus_fingerprint(sequences[:total]),
        sequences=total,
        world_size=world_size,
        rank=rank,
        seed=args.seed,
    )
    client = CacheClient(args.server, auth_token=args.auth_token)
    started = time.perf_counter()
    try:
        stored = check_run(client, shard, manifest)
        batches = pending_batches(lo, hi, args.batch_size, stored)  # with the rows still to store
        todo = sum(int(needed.sum()) for _, needed in batches)
        written = positions = 0
        bytes_per_position = 0.0
        if batches:
            try:
                with CacheWriter(
                    client,
                    shard,
                    sampler,
                    vocab_size=vocab,
                    seq_len=manifest.seq_len,
                    teacher=manifest.teacher,
                    tokenizer_fingerprint=manifest.tokenizer_fingerprint,
                    run=manifest.run,
                    seed=args.seed,
                ) as writer:
                    progress = _progress(todo * args.seq_len, f"rank {rank} → shard {shard}", args.no_progress)
                    for seqs, needed in batches:
                        write_batch(model, writer, sequences, seqs, needed, device)
                        stats = writer.stats()
                        progress.set_postfix(
                            acked=f"{stats.positions_per_s:,.0f} pos/s", B_pos=f"{stats.bytes_per_position:.1f}"
                        )
                        progress.update(int(needed.sum()) * args.seq_len)
                    writer.flush()
                    progress.close()
            except KeyboardInterrupt:
                raise TeacherInterrupted(shard, _stored_count(client, shard), hi - lo) from None
            stats = writer.stats()
            written, positions = stats.records_written, stats.positions_acked
            bytes_per_position = stats.bytes_per_position
        if args.seal and hi > lo:
            client.seal_shard(shard)
    finally:
        client.close()
    seconds = time.perf_counter() - started
    return TeacherSummary(
        rank=rank,
        world_size=world_size,
        shard=shard,
        sequences=hi - lo,
        skipped=(hi - lo) - todo,
        written=written,
        positions=positions,
        seconds=round(seconds, 3),
        positions_per_s=round(positions / seconds if seconds > 0 else 0.0, 1),
        bytes_per_position=round(bytes_per_position, 3),
    )


def check_run(client: CacheClient, shard: int, manifest: ShardManifest) -> npt.NDArray[np.uint64]:
    """The seqs ``shard`` already holds, once this run may go on; ``ValueError`` naming what differs if not."""
    assert manifest.run is not None
    run = manifest.run
    for other in client.list_shards():
        if other.manifest is None:  # damaged: its own error, on its own shard
            continue
        if other.shard == shard:
            differences = other.manifest.differences(manifest)
            if differences:
                described = ShardManifest.describe(differences, "stored", "this run")
                raise ValueError(
                    f"shard {shard} was filled by another run ({described}): "
                    "rerun with that run's settings, or write to another --shard"
                )
        elif _overlaps(other, manifest):
            theirs = other.manifest.run
            assert theirs is not None
            raise ValueError(
                f"shard {other.shard} already holds seqs [{theirs.seq_start}, {theirs.seq_stop}) of this corpus with "
                f"the same teacher, sampler and seed; this run's shard {shard} would store "
                f"[{run.seq_start}, {run.seq_stop}) again and a loader would train on them twice: rerun with "
                f"the --shard, WORLD_SIZE and --limit of the run that filled shard {other.shard}"
            )
    try:
        return client.list_seqs(shard)
    except NotFoundError:
        return np.zeros(0, dtype=np.uint64)


def _overlaps(other: ShardInfo, manifest: ShardManifest) -> bool:
    """Whether ``other`` holds seqs of this run's slice: the same corpus, seed, targets and overlapping slices."""
    mine, theirs = manifest.run, other.manifest.run if other.manifest is not None else None
    if mine is None or theirs is None:
        return False
    if (theirs.corpus_fingerprint, theirs.seed) != (mine.corpus_fingerprint, mine.seed):
        return False  # another corpus, or a deliberate second sampling (another --seed)
    if other.manifest is None or other.manifest.differences(manifest, runs=False):
        return False
    return max(mine.seq_start, theirs.seq_start) < min(mine.seq_stop, theirs.seq_stop)


def _stored_count(client: CacheClient, shard: int) -> int | None:
    try:
        return client.get_shard(shard).sequences
    except Exception:  # the server is gone too: say so rather than fail again
        return None


def _progress(total: int, description: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="pos", unit_scale=True, disable=disable, file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run; print the summary as one JSON line. Bad input: exit 2; the server refused or is gone: 1."""
    from logitcache.client import CacheError

    try:
        summary = run(args)
    except TeacherInterrupted as exc:
        print(f"logitcache teacher: {exc}", file=sys.stderr)
        return 130
    except (CacheError, ImportError, RuntimeError) as exc:  # refused, unreachable, writer failed; an extra missing
        print(f"logitcache teacher: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # a corpus, model or argument problem (no usage text: not a typo)
        print(f"logitcache teacher: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.__dict__))
    return 0
