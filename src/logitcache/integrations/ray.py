"""Teacher inference on Ray Data: a pool of teacher actors filling logitcache shards. ``pip install 'logitcache[ray]'``.

::

    import ray
    from logitcache.core.config import SamplerConfig
    from logitcache.integrations.ray import run_teacher

    ray.init()                                            # or ray.init(address="auto") on a cluster
    summary = run_teacher(
        "corpus.bin",                                     # or an [n, T] array, or a ray.data.Dataset
        model="teacher/", server="cache:50051", seq_len=1024,   # a Hugging Face model directory
        world_size=8, actors=8, num_gpus=1,               # 8 shards, 8 actors with one GPU each
        sampler=SamplerConfig(rounds=50), batch_size=8, seed=0,
    )
    print(summary.written, summary.positions_per_s)      # rerun the same call to resume after a failure

**The same records and manifests as ``logitcache teacher``.** :func:`run_teacher` stores exactly
what ``logitcache teacher`` run with ``WORLD_SIZE=world_size`` stores for the same corpus, model,
sampler, batch size and seed (on the same device and dtype, with the same float arithmetic): seq
``i`` is corpus tokens ``[i·T, (i+1)·T)``; shard ``shard + r`` holds rank ``r``'s contiguous slice
with rank ``r``'s :class:`~logitcache.core.manifest.TeacherRun`; its fixed batches are
``[lo + j·B, lo + (j+1)·B)``; seq ``s`` of shard ``h`` is sampled with
:func:`~logitcache.writer.cache_writer.sequence_seed` ``(seed, h, s)``. The pieces are the CLI's own
(:mod:`logitcache.apps.teacher`), so are its refusals: a shard filled by another run (another
world size, limit, corpus, seed, teacher or sampler) or a slice another shard already holds is a
``ValueError`` naming what differs, raised before anything is stored, as is a bad argument or a
corpus with token ids outside the teacher's vocabulary.

**How it runs.** The driver (the caller) loads the corpus, builds the ``world_size`` manifests
(the vocabulary comes from the model's config, instantiated on the meta device: no weights are
loaded on the driver), checks them against what the servers hold, lists the seqs each shard
already stores, creates the shards and puts the corpus into Ray's object store once. The pending
fixed batches become a Ray Dataset, one row ``(shard, start, stop, needed)`` per batch, mapped with
``map_batches(TeacherActor, batch_size=1, compute=ActorPoolStrategy(size=actors), num_gpus=...)``:
each :class:`TeacherActor` loads the model once, and per row runs the forward pass over the whole
fixed batch on its device (``cuda`` when Ray gave it a GPU), samples there, writes the needed rows
through a :class:`~logitcache.writer.CacheWriter` and flushes, so that a row is returned only once
its records are durably acknowledged. The driver consumes the small result rows, then checks that
every seq of every slice is stored and seals the shards (``seal=False``: leaves them open).

**Retries, restarts, resume.** Ray Data's actor pool restarts a dead actor and retries its tasks
(its defaults: ``max_restarts=-1``, ``max_task_retries=-1``; ``DataContext`` holds the rest). A
retried batch recomputes the same logits from the same fixed batch and samples them with the same
per-seq seeds, so it sends the same bytes, and the server stores an identical rewrite once (it
acknowledges it as unchanged): no duplicates, no errors. Different bytes for a stored seq would be
refused (``AlreadyExistsError``), never overwritten: the run fails loudly rather than mix two
samplings. A rerun of the same call (after Ctrl-C, a lost cluster) skips every stored seq and
stores exactly the bytes of an uninterrupted run; a rerun of a finished run stores nothing and
(re)seals.

**Corpus sources.** A path (``.bin``, ``.npy``, ``.jsonl``: :func:`~logitcache.apps.corpus.load_sequences`),
an integer array ``[n, T]``, or a ``ray.data.Dataset`` whose ``column`` holds one ``[T]`` token
sequence per row in corpus order (read in order on the driver). The corpus travels to the actors
through the object store (one copy per node), never inside the rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitcache.extras import require

require("ray", extra="ray", by="logitcache.integrations.ray")
require("transformers", extra="ray", by="logitcache.integrations.ray")

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402
import torch  # noqa: E402

from logitcache.apps.cli import TEACHER_DTYPES  # noqa: E402
from logitcache.apps.corpus import (  # noqa: E402
    CorpusError,
    corpus_fingerprint,
    load_sequences,
    tokenizer_fingerprint,
)
from logitcache.apps.teacher import (  # noqa: E402
    check_run,
    check_token_ids,
    load_teacher,
    load_tokenizer,
    pending_batches,
    pretrained,
    run_manifest,
    seq_slice,
    teacher_dtype,
    teacher_name,
    write_batch,
)
from logitcache.client import CacheClient, CacheError  # noqa: E402
from logitcache.core.config import SamplerConfig  # noqa: E402
from logitcache.core.manifest import ShardManifest  # noqa: E402
from logitcache.writer.cache_writer import CacheWriter  # noqa: E402

__all__ = ["RayTeacherSummary", "TeacherActor", "TeacherJob", "run_teacher"]

_BLOCKS_PER_ACTOR = 32  # input blocks (Ray tasks) per actor: balance at the end vs per-task overhead
_RESULT_COLUMNS = (
    "shard",
    "start",
    "stop",
    "records",
    "positions",
    "written",
    "unchanged",
    "began",
    "ended",
    "cpu_seconds",
)
_FLOAT_COLUMNS = frozenset({"began", "ended", "cpu_seconds"})  # wall clock (time.time()), seconds


@dataclass(frozen=True)
class TeacherJob:
    """What every :class:`TeacherActor` of a run needs (pickled into each actor once)."""

    model: Path | None  # a Hugging Face model directory, or
    gguf_file: Path | None  # a GGUF checkpoint (exactly one of the two)
    dtype: str  # a name of TEACHER_DTYPES or "auto" (bfloat16 on CUDA, float32 elsewhere)
    device: str | None  # None: "cuda:0" where Ray gave the actor a GPU (torch sees one), else "cpu"
    server: str | tuple[str, ...]  # cache server address(es)
    auth_token: str | None
    sampler: SamplerConfig
    seed: int
    manifests: Mapping[int, ShardManifest]  # shard -> its manifest, as the driver created it
    corpus: list[Any] = field(repr=False)  # [ObjectRef of the [n, T] token array]: nested, so Ray passes the ref


@dataclass(frozen=True)
class RayTeacherSummary:
    """What :func:`run_teacher` did, over all its shards."""

    world_size: int
    actors: int
    shards: tuple[int, ...]  # shard + r for each rank r whose slice is not empty
    sequences: int  # the run's sequences (over all shards)
    skipped: int  # already stored before this call (a rerun)
    written: int  # seqs newly stored by this call (counted on the servers: retries do not count twice)
    unchanged: int  # records rewritten with identical bytes (retried batches), as the servers acknowledged
    batches: int  # fixed batches run
    positions: int  # positions of the records this call computed and stored
    seconds: float  # wall time of the call: corpus, checks, actor start-up and model loads, batches, seals
    batch_seconds: float  # from the first batch's start to the last one's end, on the actors' clocks
    positions_per_s: float  # positions / batch_seconds: like the CLI's figure, start-up and model load excluded
    actor_cpu_seconds: float  # CPU time the actors spent in their batches, summed (forward, sampling, packing)
    sealed: tuple[int, ...]  # shards sealed at the end


class TeacherActor:
    """One teacher in Ray Data's actor pool: loads the model once, then writes one fixed batch per row.

    A row is ``shard``, ``start``, ``stop`` (the batch ``[start, stop)``) and ``needed`` (``stop - start``
    bytes, 1 where the seq is still to store); the result row says what was stored. Subclass it to
    change how the model is loaded (:meth:`load_model`); keep :meth:`__call__`'s arithmetic, which is
    what makes a retried batch, or a rerun, store the same bytes.
    """

    def __init__(self, job: TeacherJob) -> None:
        self.job = job
        self.corpus: np.ndarray = ray.get(job.corpus[0])  # [n, T], read-only, from the object store
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs: cuda:0 is the first one Ray gave it
        self.device = torch.device(job.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # streams, events and pinned copies all on this actor's GPU
        self.model, vocab = self.load_model(self.device, teacher_dtype(job.dtype, self.device))
        expected = {manifest.vocab_size for manifest in job.manifests.values()}
        if expected != {vocab}:
            raise ValueError(f"the teacher loaded in the actor has V={vocab}, the shards' manifests say {expected}")
        self.client = CacheClient(
            list(job.server) if isinstance(job.server, tuple) else job.server, auth_token=job.auth_token
        )
        self.writers: dict[int, CacheWriter] = {}  # one per shard, its stream kept open across batches

    def load_model(self, device: torch.device, dtype: torch.dtype) -> tuple[Any, int]:
        """The causal LM on ``device`` in eval mode and its vocabulary size (as ``logitcache teacher`` loads it)."""
        return load_teacher(self.job.model, self.job.gguf_file, device, dtype)

    def _writer(self, shard: int) -> CacheWriter:
        writer = self.writers.get(shard)
        if writer is None:
            manifest = self.job.manifests[shard]
            writer = self.writers[shard] = CacheWriter(
                self.client,
                shard,
                self.job.sampler,
                vocab_size=manifest.vocab_size,
                seq_len=manifest.seq_len,
                teacher=manifest.teacher,
                tokenizer_fingerprint=manifest.tokenizer_fingerprint,
                run=manifest.run,
                seed=self.job.seed,
            )
        return writer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {name: [] for name in _RESULT_COLUMNS}
        for shard, start, stop, needed_bytes in zip(
            batch["shard"], batch["start"], batch["stop"], batch["needed"], strict=True
        ):
            cpu, began = time.process_time(), time.time()
            needed = np.frombuffer(needed_bytes, dtype=np.uint8).astype(bool)
            seqs = np.arange(int(start), int(stop), dtype=np.int64)
            writer = self._writer(int(shard))
            before = writer.stats()
            write_batch(self.model, writer, self.corpus, seqs, needed, self.device)
            writer.flush()  # the row is returned only once its records are durably stored
            after = writer.stats()
            for name, value in (
                ("shard", shard),
                ("start", start),
                ("stop", stop),
                ("records", int(needed.sum())),
                ("positions", after.positions_acked - before.positions_acked),
                ("written", after.records_written - before.records_written),
                ("unchanged", after.records_unchanged - before.records_unchanged),
                ("began", began),
                ("ended", time.time()),
                ("cpu_seconds", time.process_time() - cpu),
            ):
                out[name].append(value)
        return {
            name: np.asarray(v, dtype=np.float64 if name in _FLOAT_COLUMNS else np.int64) for name, v in out.items()
        }

    def close(self) -> None:
        """Close the writers (everything is flushed already) and the client."""
        for writer in self.writers.values():
            with contextlib.suppress(Exception):  # a failed writer re-raises its error: reported already
                writer.close()
        self.writers.clear()
        self.client.close()

    def __del__(self) -> None:  # Ray Data deletes the UDF when it shuts the actor down
        with contextlib.suppress(Exception):
            self.close()


def run_teacher(
    data: str | os.PathLike[str] | np.ndarray | ray.data.Dataset,
    *,
    model: str | os.PathLike[str] | None = None,
    gguf_file: str | os.PathLike[str] | None = None,
    server: str | Sequence[str],
    seq_len: int,
    shard: int = 0,
    world_size: int = 1,
    actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    batch_size: int = 8,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    limit: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    token_dtype: str = "uint16",
    text_key: str = "text",
    column: str = "input_ids",
    teacher: str | None = None,
    seal: bool = True,
    auth_token: str | None = None,
    actor_class: type[TeacherActor] = TeacherActor,
) -> RayTeacherSummary:
    """Fill shards ``shard .. shard + world_size - 1`` with the teacher's sparse targets over ``data`` (see the
    module docstring); return once every seq is durably stored and the shards are sealed.

    ``model`` / ``gguf_file``, ``seq_len``, ``batch_size``, ``sampler``, ``seed``, ``limit``, ``dtype``,
    ``tokenizer``, ``token_dtype``, ``text_key``, ``teacher`` and ``seal`` mean what the ``logitcache
    teacher`` flags of the same names mean; ``world_size`` is its ``WORLD_SIZE`` (the number of shards).
    ``actors`` teacher actors run at once, each reserving ``num_cpus`` CPUs and ``num_gpus`` GPUs;
    ``device`` overrides the actors' device. ``column``: the token column of a ``ray.data.Dataset``.

    Raises, before anything is stored: ``ValueError`` for a bad argument, a corpus problem
    (:class:`~logitcache.apps.corpus.CorpusError`), token ids outside the vocabulary or a run the servers'
    shards refuse; ``FileNotFoundError`` for a missing model. During the run: the actors' error (a
    :class:`~logitcache.client.CacheError` from the servers, for instance), unwrapped from Ray's.
    """
    for name, value in (("world_size", world_size), ("actors", actors), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected None or an integer >= 1, got {limit!r}")
    if shard < 0 or shard + world_size > 2**32:
        raise ValueError(f"shard: expected 0 <= shard and shard + world_size <= 2**32, got {shard}, {world_size}")
    if not num_cpus > 0 or not num_gpus >= 0:
        raise ValueError(f"num_cpus, num_gpus: expected > 0 and >= 0, got {num_cpus}, {num_gpus}")
    if dtype not in (*TEACHER_DTYPES, "auto"):
        raise ValueError(f"dtype: expected one of {(*TEACHER_DTYPES, 'auto')}, got {dtype!r}")
    if (model is None) == (gguf_file is None):
        raise ValueError("model, gguf_file: expected exactly one of the two")
    if not isinstance(actor_class, type) or not issubclass(actor_class, TeacherActor):
        raise ValueError(f"actor_class: expected TeacherActor or a subclass, got {actor_class!r}")
    model_dir = None if model is None else Path(model)
    gguf = None if gguf_file is None else Path(gguf_file)
    sampler = sampler or SamplerConfig()
    folder, kwargs = pretrained(model_dir, gguf)  # FileNotFoundError for a missing model, before any work

    started = time.perf_counter()
    vocab_tokenizer = load_tokenizer(None if tokenizer is None else Path(tokenizer), model_dir, gguf)
    sequences = _sequences(data, seq_len, vocab_tokenizer, token_dtype, text_key, column)
    total = min(len(sequences), limit or len(sequences))
    vocab = _vocab_size(folder, kwargs)
    described = data if isinstance(data, str | os.PathLike) else "the corpus"
    slices = [seq_slice(rank, world_size, total) for rank in range(world_size)]
    for lo, hi in slices:  # every rank's ids, before any shard is touched
        check_token_ids(sequences, lo, hi, vocab, described)
    name = teacher_name(teacher, model_dir, gguf)
    fingerprint = tokenizer_fingerprint(vocab_tokenizer) if vocab_tokenizer is not None else ""
    corpus = corpus_fingerprint(sequences[:total])
    manifests = {
        shard + rank: run_manifest(
            sampler,
            vocab,
            seq_len=seq_len,
            teacher=name,
            tokenizer_fingerprint=fingerprint,
            corpus_fingerprint=corpus,
            sequences=total,
            world_size=world_size,
            rank=rank,
            seed=seed,
        )
        for rank in range(world_size)
    }
    job = TeacherJob(
        model=model_dir,
        gguf_file=gguf,
        dtype=dtype,
        device=device,
        server=server if isinstance(server, str) else tuple(server),
        auth_token=auth_token,
        sampler=sampler,
        seed=seed,
        manifests=manifests,
        corpus=[],
    )
    with CacheClient(list(server) if not isinstance(server, str) else server, auth_token=auth_token) as client:
        stored = {h: check_run(client, h, manifest) for h, manifest in manifests.items()}  # refuse before writing
        rows: list[dict[str, Any]] = []
        skipped = 0
        for rank, (lo, hi) in enumerate(slices):
            h = shard + rank
            batches = pending_batches(lo, hi, batch_size, stored[h])
            skipped += (hi - lo) - sum(int(needed.sum()) for _, needed in batches)
            if batches:
                client.create_shard(h, manifests[h], exist_ok=True)  # as the CLI's writer does: only with work
            rows += [
                {
                    "shard": h,
                    "start": int(seqs[0]),
                    "stop": int(seqs[-1]) + 1,
                    "needed": needed.astype(np.uint8).tobytes(),
                }
                for seqs, needed in batches
            ]
        results = _run_actors(rows, sequences[:total], job, actors, num_cpus, num_gpus, actor_class)
        shards = tuple(shard + rank for rank, (lo, hi) in enumerate(slices) if hi > lo)
        written = 0
        for rank, (lo, hi) in enumerate(slices):
            h = shard + rank
            if hi <= lo:
                continue
            now = client.list_seqs(h)
            mine = now[(now >= lo) & (now < hi)]
            if len(mine) != hi - lo:  # the pipeline returned without error: this is a bug, never silent
                raise RuntimeError(f"shard {h}: {len(mine)} of the {hi - lo} seqs of [{lo}, {hi}) are stored")
            written += len(mine) - int(np.count_nonzero((stored[h] >= lo) & (stored[h] < hi)))
        sealed = []
        if seal:
            for h in shards:
                client.seal_shard(h)
                sealed.append(h)
    seconds = time.perf_counter() - started
    positions = int(results["positions"].sum())
    batch_seconds = float(results["ended"].max() - results["began"].min()) if len(results["ended"]) else 0.0
    return RayTeacherSummary(
        world_size=world_size,
        actors=actors,
        shards=shards,
        sequences=total,
        skipped=skipped,
        written=written,
        unchanged=int(results["unchanged"].sum()),
        batches=len(rows),
        positions=positions,
        seconds=round(seconds, 3),
        batch_seconds=round(batch_seconds, 3),
        positions_per_s=round(positions / batch_seconds if batch_seconds > 0 else 0.0, 1),
        actor_cpu_seconds=round(float(results["cpu_seconds"].sum()), 3),
        sealed=tuple(sealed),
    )


def _run_actors(
    rows: list[dict[str, Any]],
    sequences: np.ndarray,
    job: TeacherJob,
    actors: int,
    num_cpus: float,
    num_gpus: float,
    actor_class: type[TeacherActor],
) -> dict[str, np.ndarray]:
    """Map ``rows`` (one per pending fixed batch) through the actor pool; the result columns, concatenated."""
    results: dict[str, list[np.ndarray]] = {name: [] for name in _RESULT_COLUMNS}
    if rows:
        job = dataclasses.replace(
            job,
            manifests={h: job.manifests[h] for h in sorted({row["shard"] for row in rows})},
            corpus=[ray.put(np.ascontiguousarray(sequences))],
        )
        # the actors' own exceptions (a CacheError...), not Ray Data's UserCodeException, which loses them
        with _data_context(raise_original_map_exception=True):
            dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), _BLOCKS_PER_ACTOR * actors))
            mapped = dataset.map_batches(
                actor_class,
                fn_constructor_kwargs={"job": job},
                batch_size=1,  # one row = one fixed batch = one forward pass
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus or None,
            )
            try:
                for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                    for name in _RESULT_COLUMNS:
                        results[name].append(np.asarray(batch[name]))
            except Exception as exc:
                raise _original(exc) from exc
    return {
        name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64 if name in _FLOAT_COLUMNS else np.int64)
        for name, parts in results.items()
    }


@contextlib.contextmanager
def _data_context(**settings: object) -> Iterator[None]:
    """Ray Data's current ``DataContext`` with ``settings`` (those this Ray version has) while the block runs."""
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in settings if hasattr(context, name)}
    try:
        for name in saved:
            setattr(context, name, settings[name])
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _original(exc: BaseException) -> BaseException:
    """The actor's own exception inside Ray's wrappers (``RayTaskError``, ``UserCodeException``), else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CacheError | ValueError | OSError | RuntimeError) and not isinstance(
            current, ray.exceptions.RayError
        ):
            return current
        cause = getattr(current, "cause", None)  # RayTaskError keeps the original here
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return exc


def _vocab_size(folder: str, kwargs: dict[str, Any]) -> int:
    """The teacher's vocabulary (its output layer's rows), from its config alone: built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, **kwargs)
    with torch.device("meta"):
        skeleton: Any = AutoModelForCausalLM.from_config(config)
    return int(skeleton.get_output_embeddings().weight.shape[0])


def _sequences(
    data: str | os.PathLike[str] | np.ndarray | ray.data.Dataset,
    seq_len: int,
    tokenizer: Any | None,
    token_dtype: str,
    text_key: str,
    column: str,
) -> np.ndarray:
    """``data`` as ``[n, seq_len]`` token ids, ``n >= 1`` (:class:`CorpusError` otherwise)."""
    if isinstance(data, str | os.PathLike):
        return load_sequences(Path(data), seq_len, tokenizer=tokenizer, token_dtype=token_dtype, text_key=text_key)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise CorpusError(f"the corpus: seq_len must be an integer >= 1, got {seq_len!r}")
    if isinstance(data, ray.data.Dataset):
        array = _read_in_order(data, column, seq_len)
        where = f"the Dataset's column {column!r}"
    elif isinstance(data, np.ndarray):
        array, where = data, "the corpus array"
    else:
        raise CorpusError(f"the corpus: expected a path, an array or a ray.data.Dataset, got {type(data).__name__}")
    if array.dtype.kind not in "iu":
        raise CorpusError(f"{where}: token ids must be integers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != seq_len:
        raise CorpusError(f"{where}: expected shape [n, {seq_len}], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise CorpusError(f"{where}: the corpus has 0 sequences, shorter than one sequence of {seq_len}")
    return array


def _read_in_order(dataset: ray.data.Dataset, column: str, seq_len: int) -> npt.NDArray[Any]:
    """``dataset[column]`` stacked into one array, rows in the Dataset's order (``[0, seq_len]`` when empty)."""
    options = dataset.context.execution_options
    preserve = options.preserve_order
    options.preserve_order = True  # seq i must be the i-th row
    parts = []
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            if column not in batch:
                raise CorpusError(f"the Dataset: no column {column!r} (it has {sorted(batch)})")
            if len(batch[column]):
                parts.append(np.asarray(batch[column]))
    finally:
        options.preserve_order = preserve
    if not parts:
        return np.zeros((0, seq_len), dtype=np.int64)
    if any(part.ndim != 2 or part.dtype == object for part in parts):
        shapes = sorted({str(list(part.shape[1:]) if part.dtype != object else "ragged") for part in parts})
        raise CorpusError(
            f"the Dataset's column {column!r}: expected one sequence of {seq_len} token ids per row, got {shapes}"
        )
    return np.concatenate(parts)
