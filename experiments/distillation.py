"""The paper's Tables 1 and 5 on a real teacher: students distilled from cached sparse targets.

1. Teacher and corpus (``lm_corpus``): SmolLM2-135M-Instruct (GGUF) and the Python 3.11
   documentation, tokenized with the teacher's tokenizer, every 20th file held out.
2. Rounds: ``N`` for random sampling is tuned on the teacher's distributions over a calibration
   batch of training positions, so that positions carry about 12 unique ids (multinomial and
   systematic each); ``N = 50`` (the paper's setting) is run as well.
3. Cache: ``logitcache teacher --gguf-file`` (a subprocess, the real CLI) writes the teacher's
   targets for the students' training sequences into a running ``logitcache serve``, one shard
   per sampler: RS multinomial and systematic at the tuned ``N`` and at ``N = 50``, and top-k 12.
4. Students: identical small Llamas with the teacher's tokenizer, trained from scratch from the
   same initial weights on the same sequences in the same order (``SparseKDLoader``, same seed),
   for the same steps, with: CE; top-k 12 (KL to the stored probabilities); top-k 12 + ghost
   token; naive fix (residual mass on the label); RS (``sparse_kd_loss``); and online full KD
   (the teacher's forward in the loop, dense KL).
5. Held-out evaluation: LM loss, the share of the CE → full-KD gap each method closes (the
   paper's metric), ECE, top-1 agreement with the teacher; and from the cache, unique ids and
   bytes per position. Loss curves.

``python experiments/distillation.py`` (about two hours on 2 CPU cores: the teacher's forward
passes, five cache fills and the online-KD student, dominate); ``--smoke`` for a run of a few minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from common import cache_server, parser, save_figure, save_json
from lm_corpus import Teacher, build_corpus, make_llama, random_windows, teacher_for, tune_rounds
from torch import Tensor

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.kd import KDParams, sparse_kd_loss
from logitcache.kd.base import Mode
from logitcache.kd.metrics import CalibrationAccumulator
from logitcache.training import SparseKDBatch, SparseKDLoader

NAME = "distillation"
# shard -> the method whose targets it holds; the ghost / naive-fix students read the top-k shard,
# CE and online full KD read the first shard for its tokens only
SHARDS = {"rs_multinomial": 0, "rs_systematic": 1, "rs_multinomial_n50": 2, "rs_systematic_n50": 3, "topk12": 4}
METHODS = ("ce", "topk12", "topk12_ghost", "naive_fix", *list(SHARDS)[:4], "full_kd_online")
MODES: dict[str, Mode] = {"topk12_ghost": "ghost", "naive_fix": "naive_fix"}  # the others: "kl"
# The paper (300M-parameter students of a 3B teacher, 10B tokens): Table 5 and Table 1's ECE.
PAPER = {
    "table5_lm_loss": {"ce": 2.81, "full_kd": 2.75, "rs_12_unique": 2.75},
    "table5_ece_pct": {"full_kd": 0.7, "rs_12_unique": 0.8},
    "table1_topk3_ece_pct": 10.6,
}


def _config(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "corpus_bytes": 300_000, "seq_len": 32, "sequences": 32, "batch": 4, "epochs": 1,
            "student": {"hidden": 16, "layers": 1, "heads": 2}, "lr": 3e-3,
            "eval_sequences": 8, "calib_sequences": 4, "curve_every": 4, "k": 12, "target_unique": 12.0,
        }  # fmt: skip
    return {
        "corpus_bytes": None, "seq_len": 128, "sequences": 1536, "batch": 8, "epochs": 2,
        "student": {"hidden": 128, "layers": 2, "heads": 4}, "lr": 3e-3,
        "eval_sequences": 128, "calib_sequences": 32, "curve_every": 48, "k": 12, "target_unique": 12.0,
    }  # fmt: skip


def _sampler_flags(cfg: dict[str, Any], rounds: dict[str, int]) -> dict[str, list[str]]:
    return {
        "rs_multinomial": ["--sampler", "multinomial", "--rounds", str(rounds["multinomial"])],
        "rs_systematic": ["--sampler", "systematic", "--rounds", str(rounds["systematic"])],
        "rs_multinomial_n50": ["--sampler", "multinomial", "--rounds", "50"],
        "rs_systematic_n50": ["--sampler", "systematic", "--rounds", "50"],
        "topk12": ["--sampler", "topk", "--top-k", str(cfg["k"])],
    }


def _cache(
    client: CacheClient, teacher: Teacher, data: Path, cfg: dict[str, Any], rounds: dict[str, int]
) -> dict[str, Any]:
    """Fill the shards with the real ``logitcache teacher`` command; return its summaries."""
    summaries = {}
    for name, extra in _sampler_flags(cfg, rounds).items():
        cmd = [
            sys.executable, "-m", "logitcache", "teacher", *teacher.cli_args, "--data", str(data),
            "--seq-len", str(cfg["seq_len"]), "--server", client.address, "--shard", str(SHARDS[name]),
            "--limit", str(cfg["sequences"]), "--batch-size", "8", "--no-progress", "--seed", str(SHARDS[name]),
            *extra,
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"logitcache teacher failed ({name}): {done.stderr[-2000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        if summary["written"] + summary["skipped"] != cfg["sequences"]:
            raise RuntimeError(f"logitcache teacher ({name}) stored {summary}, expected {cfg['sequences']} sequences")
        summaries[name] = {**summary, "wall_seconds": round(time.perf_counter() - started, 1)}
    return summaries


def _entries_per_position(client: CacheClient, shard: int) -> float:
    headers = [records.read_header(data) for _, data in client.read(shard, seqs=client.list_seqs(shard))]
    return round(sum(h.num_entries for h in headers) / sum(h.num_positions for h in headers), 3)


def _kd_loss(method: str, logits: Tensor, batch: SparseKDBatch, teacher: Any) -> Tensor:
    flat = logits.flatten(0, 1)
    labels = batch.labels.flatten()
    if method == "ce":
        return F.cross_entropy(flat, labels, ignore_index=-100)
    if method == "full_kd_online":
        with torch.no_grad():
            t_logits = teacher(input_ids=batch.input_ids).logits.flatten(0, 1)
        keep = labels != -100
        t_log = F.log_softmax(t_logits[keep].float(), dim=-1)
        return (t_log.exp() * (t_log - F.log_softmax(flat[keep], dim=-1))).sum(-1).mean()
    k = batch.target_ids.shape[-1]
    return sparse_kd_loss(
        flat,
        batch.target_ids.reshape(-1, k),
        batch.target_probs.reshape(-1, k),
        labels=labels,
        params=KDParams(mode=MODES.get(method, "kl")),
    )


@torch.no_grad()
def _logits(model: Any, ids: Tensor, chunk: int = 16) -> Tensor:
    """``[B·T, V]`` float32 next-token logits of ``ids [B, T]``, a few sequences at a time."""
    return torch.cat([model(input_ids=part).logits.flatten(0, 1).float() for part in ids.split(chunk)])


def _evaluate(model: Any, teacher_top1: Tensor, eval_ids: Tensor) -> dict[str, float]:
    logits = _logits(model, eval_ids[:, :-1])
    labels = eval_ids[:, 1:].flatten()
    calib = CalibrationAccumulator()
    calib.update(logits, labels)
    return {
        "lm_loss": float(F.cross_entropy(logits, labels)),
        "ece": float(calib.compute()),
        "top1_agreement": float((logits.argmax(-1) == teacher_top1).float().mean()),
    }


def _train_student(
    method: str,
    cfg: dict[str, Any],
    client: CacheClient,
    teacher: Any,
    vocab: int,
    seed: int,
    eval_ids: Tensor,
    teacher_top1: Tensor,
) -> tuple[dict[str, float], list[tuple[int, float]], float]:
    model = make_llama(vocab, seq_len=cfg["seq_len"], seed=seed + 1, **cfg["student"])  # same init for all
    steps = cfg["epochs"] * (cfg["sequences"] // cfg["batch"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    shard = SHARDS.get(method, SHARDS["topk12"] if method in MODES else SHARDS["rs_multinomial"])
    loader = SparseKDLoader(client, [shard], batch_size=cfg["batch"], seed=seed, drop_last=True)
    few = min(32, len(eval_ids))  # a subset for the curve: its teacher top-1s are the first rows
    curve: list[tuple[int, float]] = []
    started = time.perf_counter()
    step = 0
    for epoch in range(cfg["epochs"]):
        loader.set_epoch(epoch)
        model.train()
        for batch in loader:
            logits = model(input_ids=batch.input_ids).logits
            loss = _kd_loss(method, logits, batch, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % cfg["curve_every"] == 0 or step == steps:
                model.eval()
                top1 = teacher_top1[: few * cfg["seq_len"]]
                curve.append((step, _evaluate(model, top1, eval_ids[:few])["lm_loss"]))
                model.train()
    seconds = time.perf_counter() - started
    model.eval()
    return _evaluate(model, teacher_top1, eval_ids), curve, seconds


def _log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    cfg = _config(args.smoke)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    work = args.out / ".work" / (f"{NAME}_smoke" if args.smoke else NAME)
    teacher_spec = teacher_for(args.smoke, work)
    tokenizer = teacher_spec.tokenizer()
    corpus = build_corpus(work / "corpus", tokenizer, max_bytes=cfg["corpus_bytes"])
    train, val = corpus.tokens("train"), corpus.tokens("val")
    teacher = teacher_spec.model()
    vocab = int(teacher.get_output_embeddings().weight.shape[0])
    _log(f"teacher {teacher_spec.name} (V={vocab}); {corpus.description}", started)

    rng = np.random.default_rng(args.seed + 100)
    calib_ids = random_windows(train, cfg["seq_len"], cfg["calib_sequences"], rng)[:, :-1]
    calib_logits = _logits(teacher, calib_ids)
    rounds = {m: tune_rounds(calib_logits, m, cfg["target_unique"], args.seed) for m in ("multinomial", "systematic")}
    probs = calib_logits.softmax(-1)
    teacher_shape = {
        "entropy_nats": round(float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()), 3),
        "top12_mass": round(float(probs.topk(min(12, vocab), dim=-1).values.sum(-1).mean()), 4),
    }
    eval_ids = random_windows(val, cfg["seq_len"], cfg["eval_sequences"], rng)
    teacher_eval = _logits(teacher, eval_ids[:, :-1])
    teacher_top1 = teacher_eval.argmax(-1)
    calib = CalibrationAccumulator()
    calib.update(teacher_eval, eval_ids[:, 1:].flatten())
    teacher_metrics = {
        "lm_loss": float(F.cross_entropy(teacher_eval, eval_ids[:, 1:].flatten())),
        "ece": float(calib.compute()),
        **teacher_shape,
    }
    _log(f"rounds for ≈{cfg['target_unique']} unique ids: {rounds}; teacher {teacher_metrics}", started)

    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    with cache_server() as client:
        cache_started = time.perf_counter()
        cached = _cache(client, teacher_spec, corpus.train_bin, cfg, rounds)
        cache_seconds = time.perf_counter() - cache_started
        entries = {name: _entries_per_position(client, shard) for name, shard in SHARDS.items()}
        _log(f"cached {cfg['sequences']} sequences into {len(SHARDS)} shards; entries/position {entries}", started)
        for method in METHODS:
            metrics, curve, seconds = _train_student(
                method, cfg, client, teacher, vocab, args.seed, eval_ids, teacher_top1
            )
            rows[method] = {**metrics, "train_seconds": round(seconds, 1)}
            curves[method] = curve
            _log(f"{method}: {rows[method]}", started)

    ce, full = rows["ce"]["lm_loss"], rows["full_kd_online"]["lm_loss"]
    for method, row in rows.items():
        row["gap_closed_pct"] = round(100 * (ce - row["lm_loss"]) / (ce - full), 1) if ce != full else None
        shard = method if method in SHARDS else "topk12" if method in MODES else None
        row["unique_ids_per_position"] = entries[shard] if shard else None
        row["bytes_per_position"] = cached[shard]["bytes_per_position"] if shard else None
    steps = cfg["epochs"] * (cfg["sequences"] // cfg["batch"])
    result = {
        "experiment": NAME,
        "smoke": args.smoke,
        "teacher": {
            "name": teacher_spec.name,
            "vocab_size": vocab,
            **teacher_metrics,
            "params": sum(p.numel() for p in teacher.parameters()),
        },
        "corpus": corpus.description,
        "config": cfg,
        "student_params": sum(
            p.numel() for p in make_llama(vocab, seq_len=cfg["seq_len"], **cfg["student"]).parameters()
        ),
        "student_steps": steps,
        "cached_sequences": cfg["sequences"],
        "cached_positions": cfg["sequences"] * cfg["seq_len"],
        "eval_positions": cfg["eval_sequences"] * cfg["seq_len"],
        "rs_rounds": {**rounds, "n50": 50},
        "cache": cached,
        "methods": rows,
        "curves": curves,
        "paper": PAPER,
        "seconds": {"caching": round(cache_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    save_json(args.out, NAME, result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, curve in curves.items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], label=method, marker="." if args.smoke else None)
    ax.set_xlabel("student step")
    ax.set_ylabel("held-out LM loss")
    ax.set_title(f"Students distilled from cached targets of {teacher_spec.name}")
    ax.legend(fontsize=8)
    save_figure(args.out, f"{NAME}_curves", fig)
    plt.close(fig)
    print(
        json.dumps(
            {
                m: {"lm_loss": round(r["lm_loss"], 4), "ece": round(r["ece"], 4), "gap": r["gap_closed_pct"]}
                for m, r in rows.items()
            }
        )
    )


if __name__ == "__main__":
    main()
