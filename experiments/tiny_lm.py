"""The paper's Tables 1 and 5 in miniature: students distilled from cached sparse targets.

1. Corpus and tokenizer (``lm_corpus``): the CPython standard library's sources, byte-level BPE.
2. Teacher: a small Llama trained with cross-entropy, saved with ``save_pretrained``.
3. Cache: ``logitcache teacher`` (a subprocess, the real CLI) writes the teacher's targets for the
   students' training sequences into a running ``logitcache serve``: random sampling with 50
   rounds (multinomial, and systematic) and top-k 12, one shard each.
4. Students: identical smaller Llamas, same initial weights, same sequences in the same order
   (``SparseKDLoader``, same seed), same steps, trained with: CE; top-k 12 (KL to the stored
   probabilities); top-k 12 + ghost token; naive fix (residual mass on the label); random sampling
   (multinomial, systematic); and online full KD (teacher forward in the loop, dense KL).
5. Held-out evaluation: LM loss, ECE and top-1 agreement with the teacher, and the percentage of
   the CE → full-KD loss gap each method closes (the paper's metric). Loss curves.

``python experiments/tiny_lm.py`` (about 35 minutes on 2 CPU cores, most of it training the teacher, which
later runs reuse from ``results/.work/``); ``--smoke`` for a run of seconds.
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
from lm_corpus import build_corpus, make_llama, random_windows
from torch import Tensor
from transformers import AutoModelForCausalLM

from logitcache.client import CacheClient
from logitcache.core import records
from logitcache.kd import KDParams, sparse_kd_loss
from logitcache.kd.base import Mode
from logitcache.kd.metrics import CalibrationAccumulator
from logitcache.training import SparseKDBatch, SparseKDLoader

METHODS = ("ce", "topk12", "topk12_ghost", "naive_fix", "rs_multinomial", "rs_systematic", "full_kd_online")
SHARDS = {"rs_multinomial": 0, "rs_systematic": 1, "topk12": 2}  # the ghost / naive-fix students read shard 2 too


def _config(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "corpus_bytes": 200_000, "vocab": 512, "seq_len": 64, "batch": 8,
            "teacher": {"hidden": 64, "layers": 2, "heads": 2}, "teacher_steps": 30,
            "student": {"hidden": 32, "layers": 1, "heads": 2}, "student_steps": 12,
            "eval_sequences": 16, "curve_every": 6, "rounds": 50, "k": 12, "lr": 3e-3,
        }  # fmt: skip
    return {
        "corpus_bytes": None, "vocab": 4096, "seq_len": 128, "batch": 16,
        "teacher": {"hidden": 128, "layers": 4, "heads": 4}, "teacher_steps": 800,
        "student": {"hidden": 64, "layers": 2, "heads": 2}, "student_steps": 400,
        "eval_sequences": 256, "curve_every": 50, "rounds": 50, "k": 12, "lr": 3e-3,
    }  # fmt: skip


def _train_teacher(cfg: dict[str, Any], tokens: np.ndarray, vocab: int, seed: int) -> Any:
    model = make_llama(vocab, seq_len=cfg["seq_len"], seed=seed, **cfg["teacher"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["teacher_steps"], pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(cfg["teacher_steps"]):
        window = random_windows(tokens, cfg["seq_len"], cfg["batch"], rng)
        logits = model(input_ids=window[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _cache(client: CacheClient, model_dir: Path, data: Path, cfg: dict[str, Any], sequences: int) -> dict[str, Any]:
    """Fill the three shards with the real ``logitcache teacher`` command; return its summaries."""
    runs = {
        "rs_multinomial": ["--sampler", "multinomial", "--rounds", str(cfg["rounds"])],
        "rs_systematic": ["--sampler", "systematic", "--rounds", str(cfg["rounds"])],
        "topk12": ["--sampler", "topk", "--top-k", str(cfg["k"])],
    }
    summaries = {}
    for name, extra in runs.items():
        cmd = [
            sys.executable, "-m", "logitcache", "teacher", "--model", str(model_dir), "--data", str(data),
            "--seq-len", str(cfg["seq_len"]), "--server", client.address, "--shard", str(SHARDS[name]),
            "--limit", str(sequences), "--batch-size", "16", "--no-progress", "--seal", *extra,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"logitcache teacher failed ({name}): {done.stderr[-2000:]}")
        summaries[name] = json.loads(done.stdout.strip().splitlines()[-1])
        if summaries[name]["written"] + summaries[name]["skipped"] != sequences:
            raise RuntimeError(f"logitcache teacher ({name}) stored {summaries[name]}, expected {sequences} sequences")
    return summaries


def _entries_per_position(client: CacheClient, shard: int, sample: int = 64) -> float:
    headers = [records.read_header(data) for _, data in client.read(shard, seqs=client.list_seqs(shard)[:sample])]
    return round(sum(h.num_entries for h in headers) / sum(h.num_positions for h in headers), 2)


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
    mode: Mode = "ghost" if method == "topk12_ghost" else "naive_fix" if method == "naive_fix" else "kl"
    k = batch.target_ids.shape[-1]
    return sparse_kd_loss(
        flat,
        batch.target_ids.reshape(-1, k),
        batch.target_probs.reshape(-1, k),
        labels=labels,
        params=KDParams(mode=mode),
    )


@torch.no_grad()
def _evaluate(model: Any, teacher_top1: Tensor, eval_ids: Tensor) -> dict[str, float]:
    logits = model(input_ids=eval_ids[:, :-1]).logits.flatten(0, 1).float()
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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["student_steps"], pct_start=0.1)
    shard = SHARDS.get(method, SHARDS["topk12"] if method.startswith(("topk", "naive")) else SHARDS["rs_multinomial"])
    loader = SparseKDLoader(client, [shard], batch_size=cfg["batch"], seed=seed, drop_last=True)
    curve: list[tuple[int, float]] = []
    started = time.perf_counter()
    model.train()
    for step, batch in enumerate(loader, start=1):
        logits = model(input_ids=batch.input_ids).logits
        loss = _kd_loss(method, logits, batch, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg["curve_every"] == 0 or step == cfg["student_steps"]:
            model.eval()
            few = min(64, len(eval_ids))  # a subset for the curve: its teacher top-1s are the first few rows
            curve.append((step, _evaluate(model, teacher_top1[: few * cfg["seq_len"]], eval_ids[:few])["lm_loss"]))
            model.train()
        if step == cfg["student_steps"]:
            break
    seconds = time.perf_counter() - started
    model.eval()
    return _evaluate(model, teacher_top1, eval_ids), curve, seconds


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    cfg = _config(args.smoke)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    work = args.out / ".work" / ("tiny_lm_smoke" if args.smoke else "tiny_lm")
    corpus = build_corpus(work / "corpus", vocab_size=cfg["vocab"], max_bytes=cfg["corpus_bytes"])
    train, val = corpus.tokens("train"), corpus.tokens("val")
    model_dir = work / "teacher"
    if (model_dir / "config.json").exists():  # trained by an earlier run with these settings (delete to retrain)
        teacher = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    else:
        teacher = _train_teacher(cfg, train, corpus.vocab_size, args.seed)
        teacher.save_pretrained(str(model_dir))
        for f in corpus.tokenizer_dir.iterdir():  # the teacher directory carries its tokenizer
            (model_dir / f.name).write_bytes(f.read_bytes())
    teacher_seconds = time.perf_counter() - started

    rng = np.random.default_rng(args.seed + 100)
    eval_ids = random_windows(val, cfg["seq_len"], cfg["eval_sequences"], rng)
    with torch.no_grad():
        teacher_eval = teacher(input_ids=eval_ids[:, :-1]).logits.flatten(0, 1).float()
    teacher_top1 = teacher_eval.argmax(-1)
    calib = CalibrationAccumulator()
    calib.update(teacher_eval, eval_ids[:, 1:].flatten())
    teacher_metrics = {
        "lm_loss": float(F.cross_entropy(teacher_eval, eval_ids[:, 1:].flatten())),
        "ece": float(calib.compute()),
    }

    sequences = cfg["student_steps"] * cfg["batch"]
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    with cache_server() as client:
        cache_started = time.perf_counter()
        cached = _cache(client, model_dir, corpus.train_bin, cfg, sequences)
        cache_seconds = time.perf_counter() - cache_started
        entries = {name: _entries_per_position(client, shard) for name, shard in SHARDS.items()}
        for method in METHODS:
            metrics, curve, seconds = _train_student(
                method, cfg, client, teacher, corpus.vocab_size, args.seed, eval_ids, teacher_top1
            )
            rows[method] = {**metrics, "train_seconds": round(seconds, 2)}
            curves[method] = curve

    ce, full = rows["ce"]["lm_loss"], rows["full_kd_online"]["lm_loss"]
    for row in rows.values():
        row["gap_closed_pct"] = round(100 * (ce - row["lm_loss"]) / (ce - full), 1) if ce != full else None
    result = {
        "smoke": args.smoke,
        "corpus": corpus.description,
        "train_tokens": corpus.train_tokens,
        "val_tokens": corpus.val_tokens,
        "config": cfg,
        "teacher": {**teacher_metrics, "params": sum(p.numel() for p in teacher.parameters())},
        "student_params": sum(
            p.numel() for p in make_llama(corpus.vocab_size, seq_len=cfg["seq_len"], **cfg["student"]).parameters()
        ),
        "cached_sequences": sequences,
        "cache": {
            name: {k: cached[name][k] for k in ("written", "positions", "bytes_per_position")} for name in cached
        },
        "entries_per_position": entries,  # unique tokens per position (sampled) or k (top-k)
        "methods": rows,
        "curves": curves,
        "seconds": {
            "teacher_training": round(teacher_seconds, 1),
            "caching": round(cache_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    save_json(args.out, "tiny_lm", result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, curve in curves.items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], label=method, marker="." if args.smoke else None)
    ax.set_xlabel("student step")
    ax.set_ylabel("held-out LM loss")
    ax.set_title("Students distilled from cached targets (tiny LM)")
    ax.legend()
    save_figure(args.out, "tiny_lm_curves", fig)
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
