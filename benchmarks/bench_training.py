"""Benchmark: training throughput with cached sparse targets against plain CE and online full KD (Table 4).

1. Models: tiny random-weight ``LlamaForCausalLM`` configurations (``experiments/lm_corpus.make_llama``):
   one student (1.6 M parameters) and, per size ratio, one teacher (default 2.1× and 4.7× the
   student's parameters; V = 4096, T = 256, batch 8, CPU). One intra-op thread: on a shared 2-core
   machine two OpenMP threads stall each other whenever another process holds a core. Tokens are
   synthetic (uniform random ids): the cost of a step does not depend on what the tokens say, and
   a random-weight model sees no difference between text and noise. The teacher's ``lm_head`` is
   scaled so its logits have standard deviation ``--teacher-logit-std`` (6.3 gives ≈ 13 unique
   tokens per position of 50 draws, as LM teachers do; unscaled, a random teacher is nearly
   uniform and every draw is a new token).
2. Cache: a real server process (``logitcache serve``) on this machine; per ratio, the teacher's
   logits on the token sequences are sampled (N = 50 multinomial rounds) and written into their
   own shard with ``CacheWriter`` before any timing.
3. Three ways to train the same student (same initial weights, each its own AdamW), one step =
   forward + backward + optimizer step on ``[B, T]`` tokens:
   (a) ``ce``: plain next-token cross-entropy;
   (b) ``rs_cached``: ``sparse_kd_loss`` against random-sampling targets that ``SparseKDLoader``
       reads from the server (shuffled, prefetch thread, CPU tensors);
   (c) ``full_kd_online``: the teacher's forward pass in the loop (no grad) and dense KL from its
       softmax to the student's, over all V.
   (d) ``trainer_ce``: (a) through a plain Hugging Face ``Trainer`` (the model's own CE loss, a
       tensor dataset of the same tokens, ``default_data_collator``);
   (e) ``trainer_rs``: (b) through ``SparseKDTrainer`` (logitcache.integrations.transformers), the
       same loader and shard. ``ratio_trainer_rs_vs_ce`` = (e) / (d): what distilling from the
       cache costs a Trainer user over plain CE training (both pay Trainer's per-block set-up).
   Timing is interleaved in rounds: each round runs one block of each method (one loader epoch
   of ``--seqs`` sequences, ``--seqs / --batch-size`` steps; the loader starts cold in every
   block, so reading, decoding and padding are inside the RS time), in an order that rotates
   from round to round. Tokens / s of a method is the block's tokens over its wall time, median
   over the rounds after a warm-up round (this 2-core machine is shared and noisy).

The last line printed is one JSON object: the headline figures are those of the largest teacher,
``per_ratio`` has every ratio. Run: ``python benchmarks/bench_training.py`` (``--smoke``: tiny
sizes, seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import Trainer, TrainingArguments, default_data_collator

from logitcache.client import CacheClient
from logitcache.core.config import SamplerConfig
from logitcache.integrations.transformers import SparseKDTrainer
from logitcache.kd import sparse_kd_loss
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDLoader
from logitcache.writer import CacheWriter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from lm_corpus import make_llama

METHODS = ("ce", "rs_cached", "full_kd_online", "trainer_ce", "trainer_rs")
IGNORE = -100


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _shape(text: str) -> tuple[int, int, int]:
    hidden, layers, heads = (int(x) for x in text.split("x"))
    return hidden, layers, heads


def _labels(input_ids: Tensor) -> Tensor:
    """The loader's convention: inputs shifted left, ``IGNORE`` at the last position."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def _scale_teacher(teacher: Any, tokens: Tensor, target_std: float) -> None:
    """Scale ``lm_head`` so the teacher's logits on ``tokens`` have standard deviation ``target_std``."""
    with torch.no_grad():
        std = float(teacher(tokens).logits.std())
        teacher.lm_head.weight.mul_(target_std / std)


def _fill(client: CacheClient, shard: int, teacher: Any, tokens: Tensor, batch: int, name: str) -> dict[str, float]:
    """Teacher logits on ``tokens`` → sampled targets → shard ``shard``, durably acknowledged."""
    n, t = tokens.shape
    started = time.perf_counter()
    with CacheWriter(client, shard, SamplerConfig(rounds=50), vocab_size=teacher.config.vocab_size, seq_len=t,
                     teacher=name, seed=0) as writer:  # fmt: skip
        for lo in range(0, n, batch):
            ids = tokens[lo : lo + batch]
            with torch.no_grad():
                logits = teacher(ids).logits
            writer.write(range(lo, lo + len(ids)), ids, logits)
    stats = writer.stats()
    assert stats.positions_acked == n * t
    client.seal_shard(shard)
    return {"fill_s": round(time.perf_counter() - started, 2), "bytes_per_position": round(stats.bytes_per_position, 2)}


def _bench_ratio(
    args: argparse.Namespace, client: CacheClient, shard: int, student0: Any, teacher: Any, tokens: Tensor
) -> dict[str, Any]:
    b = args.batch_size
    steps = len(tokens) // b
    loader = SparseKDLoader(client, [shard], batch_size=b, seed=0, drop_last=True)
    students = {m: copy.deepcopy(student0).train() for m in METHODS}
    optims = {m: torch.optim.AdamW(students[m].parameters(), lr=1e-4) for m in METHODS}
    teacher.eval()
    widest = 0
    unique: list[float] = []

    def step(method: str, input_ids: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> None:
        logits = students[method](input_ids).logits  # [B, T, V]
        loss = loss_fn(logits)
        loss.backward()
        optims[method].step()
        optims[method].zero_grad(set_to_none=True)
        assert torch.isfinite(loss), (method, float(loss))

    def run_ce(round_: int) -> None:
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(round_))
        for i in range(steps):
            ids = tokens[order[i * b : (i + 1) * b]]
            labels = _labels(ids).flatten()

            def loss_fn(logits: Tensor, labels: Tensor = labels) -> Tensor:
                return F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORE)

            step("ce", ids, loss_fn)

    def run_rs(round_: int) -> None:
        nonlocal widest
        loader.set_epoch(round_)
        done = 0
        for batch in loader:
            k = batch.target_ids.shape[-1]
            widest = max(widest, k)
            unique.append(float((batch.target_ids >= 0).sum()) / batch.target_ids[..., 0].numel())
            if round_ == 0:  # alignment: the record's input ids are the tokens the teacher saw
                assert torch.equal(batch.input_ids, tokens[batch.seqs])

            def loss_fn(logits: Tensor, batch: Any = batch, k: int = k) -> Tensor:
                return sparse_kd_loss(
                    logits.flatten(0, 1),
                    batch.target_ids.view(-1, k),
                    batch.target_probs.view(-1, k),
                    labels=batch.labels.flatten(),
                )

            step("rs_cached", batch.input_ids, loss_fn)
            done += 1
        assert done == steps

    def run_full(round_: int) -> None:
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(round_))
        for i in range(steps):
            ids = tokens[order[i * b : (i + 1) * b]]
            keep = (_labels(ids) != IGNORE).flatten()
            with torch.no_grad():
                teacher_logp = F.log_softmax(teacher(ids).logits.flatten(0, 1), dim=-1)

            def loss_fn(logits: Tensor, teacher_logp: Tensor = teacher_logp, keep: Tensor = keep) -> Tensor:
                student_logp = F.log_softmax(logits.flatten(0, 1), dim=-1)
                kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)  # [N]
                return kl[keep].mean()

            step("full_kd_online", ids, loss_fn)

    def trainer_args(round_: int, out: str) -> Any:
        return TrainingArguments(
            out, max_steps=steps, per_device_train_batch_size=b, learning_rate=1e-4, use_cpu=True, report_to=[],
            save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True, seed=round_,
        )  # fmt: skip

    dataset = [{"input_ids": ids, "labels": ids} for ids in tokens]  # the model shifts the labels itself

    def run_trainer_ce(round_: int) -> None:
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(students["trainer_ce"], trainer_args(round_, out), train_dataset=dataset,
                              data_collator=default_data_collator)  # fmt: skip
            assert trainer.train().global_step == steps

    def run_trainer_rs(round_: int) -> None:
        with tempfile.TemporaryDirectory() as out:
            trainer = SparseKDTrainer(students["trainer_rs"], trainer_args(round_, out), trainer_loader)
            assert trainer.train().global_step == steps

    trainer_loader = SparseKDLoader(client, [shard], batch_size=b, seed=1, drop_last=True, rank=0, world_size=1)
    runners = {
        "ce": run_ce,
        "rs_cached": run_rs,
        "full_kd_online": run_full,
        "trainer_ce": run_trainer_ce,
        "trainer_rs": run_trainer_rs,
    }
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for j in range(len(METHODS)):
            method = METHODS[(round_ + j) % len(METHODS)]
            started = time.perf_counter()
            runners[method](round_)
            if round_ > 0:
                times[method].append(time.perf_counter() - started)
        done = {m: round(times[m][-1], 2) for m in METHODS if round_ > 0}
        print(f"round {round_}/{args.rounds} block seconds {done or 'warm-up'}", file=sys.stderr, flush=True)
    block_tokens = steps * b * tokens.shape[1]
    tps = {m: block_tokens / statistics.median(times[m]) for m in METHODS}
    return {
        "teacher_params_m": round(_params(teacher) / 1e6, 2),
        "teacher_student_ratio": round(_params(teacher) / _params(student0), 2),
        "tokens_per_s_ce": round(tps["ce"]),
        "tokens_per_s_rs_cached": round(tps["rs_cached"]),
        "tokens_per_s_full_kd_online": round(tps["full_kd_online"]),
        "ratio_rs_vs_ce": round(tps["rs_cached"] / tps["ce"], 3),
        "ratio_rs_vs_full_kd": round(tps["rs_cached"] / tps["full_kd_online"], 3),
        "ratio_ce_vs_full_kd": round(tps["ce"] / tps["full_kd_online"], 3),
        "tokens_per_s_trainer_ce": round(tps["trainer_ce"]),
        "tokens_per_s_trainer_rs": round(tps["trainer_rs"]),
        "ratio_trainer_rs_vs_ce": round(tps["trainer_rs"] / tps["trainer_ce"], 3),
        "step_ms_median": {m: round(1000 * statistics.median(times[m]) / steps, 1) for m in METHODS},
        "block_s": {m: [round(s, 3) for s in times[m]] for m in METHODS},
        "widest_k": widest,
        "unique_per_position": round(statistics.mean(unique), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and two rounds: a seconds-long run (CI)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seqs", type=int, default=32, help="sequences in each shard: one block = one epoch")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--student", type=_shape, default=(128, 2, 4), help="hidden x layers x heads")
    parser.add_argument(
        "--teachers", type=_shape, nargs="+", default=[(192, 3, 4), (256, 5, 4)], help="hidden x layers x heads each"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--teacher-logit-std", type=float, default=6.3, help="0: leave the teacher's lm_head as is")
    args = parser.parse_args()
    if args.smoke:
        args.vocab_size, args.seq_len, args.batch_size, args.seqs, args.rounds = 512, 32, 2, 4, 2
        args.student, args.teachers = (32, 1, 2), [(48, 1, 2), (64, 2, 2)]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    v, t = args.vocab_size, args.seq_len
    tokens = torch.randint(0, v, (args.seqs, t), generator=torch.Generator().manual_seed(0))
    hidden, layers, heads = args.student
    student = make_llama(v, hidden=hidden, layers=layers, heads=heads, seq_len=t, seed=0)
    per_ratio: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), http=False)
        try:
            with CacheClient(server.address, timeout=120) as client:
                for shard, (th, tl, tn) in enumerate(args.teachers):
                    teacher = make_llama(v, hidden=th, layers=tl, heads=tn, seq_len=t, seed=shard + 1).eval()
                    if args.teacher_logit_std > 0:
                        _scale_teacher(teacher, tokens[: args.batch_size], args.teacher_logit_std)
                    name = f"llama-h{th}-l{tl}"
                    fill = _fill(client, shard, teacher, tokens, args.batch_size, name)
                    result = {"teacher": name, **fill, **_bench_ratio(args, client, shard, student, teacher, tokens)}
                    per_ratio.append(result)
                    print(json.dumps({key: val for key, val in result.items() if key != "block_s"}), file=sys.stderr)
        finally:
            server.stop()
    head = max(per_ratio, key=lambda r: float(r["teacher_student_ratio"]))
    summary = {
        "tokens_per_s_ce": head["tokens_per_s_ce"],
        "tokens_per_s_rs_cached": head["tokens_per_s_rs_cached"],
        "tokens_per_s_full_kd_online": head["tokens_per_s_full_kd_online"],
        "ratio_rs_vs_ce": head["ratio_rs_vs_ce"],
        "ratio_rs_vs_full_kd": head["ratio_rs_vs_full_kd"],
        "ratio_trainer_rs_vs_ce": head["ratio_trainer_rs_vs_ce"],
        "headline_teacher_student_ratio": head["teacher_student_ratio"],
        "student_params_m": round(_params(student) / 1e6, 2),
        "vocab_size": v,
        "seq_len": t,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "per_ratio": per_ratio,
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
