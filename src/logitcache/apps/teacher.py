"""``logitcache teacher``: run a Hugging Face causal LM over a corpus and cache its sparse targets.

Sequence ``i`` of the corpus (tokens ``[i·T, (i+1)·T)``, see :mod:`logitcache.apps.corpus`) is
stored as seq ``i``. Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``), rank ``r`` of
``W`` takes the contiguous slice ``[r·n/W, (r+1)·n/W)`` of the sequences and writes shard
``--shard + r``, on ``cuda:LOCAL_RANK`` when there is a GPU: many GPUs fill the cache together and
no two ranks touch the same shard. A rerun skips the seqs its shard already holds, so an
interrupted job resumes where it stopped. A rerun must use the same ``WORLD_SIZE`` and ``--limit``:
a shard holding seqs outside its rank's slice is refused (exit 2).
The shard's manifest records the teacher and the tokenizer's fingerprint; a rerun with another
teacher, tokenizer or sampler is refused by the server (FAILED_PRECONDITION), never mixed in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from logitcache.apps.corpus import load_sequences, tokenizer_fingerprint
from logitcache.client import CacheClient, NotFoundError
from logitcache.core.config import SamplerConfig
from logitcache.core.manifest import ShardManifest
from logitcache.extras import require
from logitcache.writer.cache_writer import CacheWriter

__all__ = ["TeacherSummary", "run"]

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


def _pretrained(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``from_pretrained``'s folder and keywords for ``--model DIR`` or ``--gguf-file FILE``."""
    if args.gguf_file is None:
        return str(args.model), {}
    for module in ("gguf", "accelerate"):  # transformers needs both to load a GGUF checkpoint
        require(module, extra="gguf", by="logitcache teacher --gguf-file")
    if not args.gguf_file.is_file():
        raise FileNotFoundError(f"--gguf-file {args.gguf_file}: no such file")
    return str(args.gguf_file.parent), {"gguf_file": args.gguf_file.name}


def _load_tokenizer(args: argparse.Namespace) -> Any | None:
    from transformers import AutoTokenizer

    folder, kwargs = (str(args.tokenizer), {}) if args.tokenizer else _pretrained(args)
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer at %s (%s): the manifest gets no tokenizer fingerprint", folder, exc)
        return None


def run(args: argparse.Namespace) -> TeacherSummary:
    """Run the teacher as ``args`` (the ``teacher`` flags of :mod:`logitcache.apps.cli`) say; raise on any failure."""
    require("transformers", extra="teacher", by="logitcache teacher")
    from transformers import AutoModelForCausalLM

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
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype != "auto"
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    sampler = SamplerConfig(
        method=args.sampler, rounds=args.rounds, temperature=args.temperature, k=args.top_k, top_p=args.top_p
    )

    tokenizer = _load_tokenizer(args)
    sequences = load_sequences(
        args.data, args.seq_len, tokenizer=tokenizer, token_dtype=args.token_dtype, text_key=args.text_key
    )
    total = min(len(sequences), args.limit or len(sequences))
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    shard = args.shard + rank

    folder, kwargs = _pretrained(args)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    model = model.to(device).eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    if hi > lo:
        top = int(np.max(sequences[lo:hi]))
        if top >= vocab:
            raise ValueError(f"{args.data}: token id {top} is outside the teacher's vocabulary (V={vocab})")

    manifest = ShardManifest.for_sampler(
        sampler,
        vocab,
        seq_len=args.seq_len,
        teacher=args.teacher_name or (args.model.resolve().name if args.gguf_file is None else args.gguf_file.stem),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else "",
    )
    client = CacheClient(args.server or ["127.0.0.1:50051"], auth_token=args.auth_token)
    try:
        todo = _not_yet_stored(client, shard, lo, hi)
        generator = torch.Generator(device).manual_seed(args.seed + rank)
        started = time.perf_counter()
        with CacheWriter(
            client,
            shard,
            sampler,
            vocab_size=vocab,
            seq_len=manifest.seq_len,
            teacher=manifest.teacher,
            tokenizer_fingerprint=manifest.tokenizer_fingerprint,
            generator=generator,
        ) as writer:
            progress = _progress(len(todo) * args.seq_len, f"rank {rank} → shard {shard}", args.no_progress)
            for at in range(0, len(todo), args.batch_size):
                seqs = todo[at : at + args.batch_size].astype(np.int64)
                ids = torch.from_numpy(np.asarray(sequences[seqs], dtype=np.int64)).to(device)
                with torch.inference_mode():
                    logits = model(input_ids=ids).logits
                writer.write(seqs.tolist(), ids, logits)
                stats = writer.stats()
                progress.set_postfix(
                    acked=f"{stats.positions_per_s:,.0f} pos/s", B_pos=f"{stats.bytes_per_position:.1f}"
                )
                progress.update(ids.numel())
            writer.flush()
            progress.close()
        stats = writer.stats()
        if args.seal:
            client.seal_shard(shard)
    finally:
        client.close()
    seconds = time.perf_counter() - started
    return TeacherSummary(
        rank=rank,
        world_size=world_size,
        shard=shard,
        sequences=hi - lo,
        skipped=(hi - lo) - len(todo),
        written=stats.records_written,
        positions=stats.positions_acked,
        seconds=round(seconds, 3),
        positions_per_s=round(stats.positions_acked / seconds if seconds > 0 else 0.0, 1),
        bytes_per_position=round(stats.bytes_per_position, 3),
    )


def _not_yet_stored(client: CacheClient, shard: int, lo: int, hi: int) -> npt.NDArray[np.uint64]:
    """Seqs of this rank's slice ``[lo, hi)`` that ``shard`` does not hold yet.

    A shard holding seqs outside the slice was filled by a run that split the corpus differently
    (another ``WORLD_SIZE`` or ``--limit``): refused, since going on could store seqs twice across
    shards. (The manifest cannot tell runs apart: two runs may legitimately share one, e.g. two
    independent samplings of the same corpus.)
    """
    try:
        stored = client.list_seqs(shard)
    except NotFoundError:
        return np.arange(lo, hi, dtype=np.uint64)
    outside = stored[(stored < lo) | (stored >= hi)]
    if outside.size:
        raise ValueError(
            f"shard {shard} holds seq {int(outside[0])}, outside this rank's slice [{lo}, {hi}): "
            "rerun with the WORLD_SIZE and --limit of the run that filled it"
        )
    return np.setdiff1d(np.arange(lo, hi, dtype=np.uint64), stored)


def _progress(total: int, description: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="pos", unit_scale=True, disable=disable, file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run; print the summary as one JSON line. Bad input: exit 2; the server refused or is gone: 1."""
    from logitcache.client import CacheError

    try:
        summary = run(args)
    except (CacheError, ImportError, RuntimeError) as exc:  # refused, unreachable, writer failed; an extra missing
        print(f"logitcache teacher: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # a corpus, model or argument problem (no usage text: not a typo)
        print(f"logitcache teacher: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.__dict__))
    return 0
